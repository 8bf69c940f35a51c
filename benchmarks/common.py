"""What both benchmarks share: the models from the project's Hydra config, random ground truth,
one timing loop (several runs in turn) and the record of what the figures were measured on."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from dssd.config import compose_train, conf_dir
from dssd.tools.network_table import model_names, model_spec

CONF = conf_dir()


def add_models_argument(
    parser: argparse.ArgumentParser, default: Sequence[str], example: str, note: str = ""
) -> None:
    """The ``--models`` option: model configs, each with its own overrides (:func:`model_spec`)."""
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(default),
        type=model_spec,
        metavar="NAME[:OVERRIDES]",
        help="model configs, each optionally with comma-separated overrides of its own, e.g. "
        f"{example} (one of: {', '.join(model_names())}){note}",
    )


def compose_config(
    model: str, image_size: int | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """``conf/train.yaml`` composed with ``model=<model>`` (not resolved).

    ``model.net``, ``model.loss``, ``model.postprocess``, ``model.optimizer`` and ``data`` can be
    instantiated from it; ``paths.output_dir`` and what reads it need a running Hydra app.
    """
    overrides = [f"model={model}", *overrides]
    if image_size is not None:
        overrides.append(f"model.net.image_size={image_size}")
    return compose_train(overrides)


def build_net(model: str, image_size: int | None, overrides: Sequence[str] = ()) -> nn.Module:
    """Instantiate ``model.net`` of ``conf/train.yaml`` with ``model=<model>``."""
    return instantiate(compose_config(model, image_size, overrides).model.net)


def random_targets(
    batch_size: int, num_classes: int, max_objects: int = 10, seed: int = 0
) -> list[dict[str, Tensor]]:
    """1-``max_objects`` random boxes per image (xyxy normalised, sides 0.05-0.8), each with a
    random label of the ``num_classes`` foreground classes (1..num_classes)."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch_size):
        n = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        wh = 0.05 + 0.75 * torch.rand(n, 2, generator=g)
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(1, num_classes + 1, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA), a no-op on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_in_turn(
    runs: Sequence[Sequence[Callable[..., Any]]],
    iters: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> list[list[list[float]]]:
    """Seconds of ``iters`` timed passes of each run, after ``warmup`` untimed ones.

    The runs take turns, order alternating from pass to pass, so that all see the same machine
    load. A run is a chain of stages: the first is called without arguments, each next one on
    the previous one's result, and the clock is read after each stage (the device synchronised):
    ``times[run][stage][pass]`` is the time from the start of the pass to the end of the stage,
    e.g. the forward pass alone and forward + post-processing from the same passes.

    Not ``torch.utils.benchmark.Timer``: it times one statement at a time, so two runs measured
    one after the other see whatever else the (shared, 2-core) machine does in between, and it
    has no clock between the stages of one pass; the ratios these benchmarks print need both.
    """
    times: list[list[list[float]]] = [[[] for _ in run] for run in runs]
    for i in range(warmup + iters):
        order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            sync()
            start = time.perf_counter()
            result = None
            for j, stage in enumerate(runs[k]):
                result = stage() if j == 0 else stage(result)
                sync()
                if i >= warmup:
                    times[k][j].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures are measured on: the device, cores and torch threads, library versions
    and the time (UTC)."""
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "device_type": device.type,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
