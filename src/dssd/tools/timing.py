"""Shared helpers of the speed benchmarks: build a network from the project's Hydra config, time
eval-mode passes of several networks in turn, time a DataLoader and profile a piece of work
(``benchmark``, ``benchmark_fold`` and ``benchmark_data``)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from dssd.config import register_resolvers

ROOT = Path(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[3]))
CONF = ROOT / "conf"


def model_names() -> list[str]:
    """The model configs: ``conf/model/<name>.yaml``."""
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def compose_config(
    model: str, image_size: int | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """``conf/train.yaml`` composed with ``model=<model>`` (not resolved).

    Only ``model.net``, ``model.loss`` and ``model.postprocess`` can be instantiated from it:
    the rest of the config (``paths.output_dir`` above all) needs a running Hydra app.
    """
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    register_resolvers()
    overrides = [f"model={model}", *overrides]
    if image_size is not None:
        overrides.append(f"model.net.image_size={image_size}")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def build_net(model: str, image_size: int | None, overrides: Sequence[str] = ()) -> nn.Module:
    """Instantiate ``model.net`` of ``conf/train.yaml`` with ``model=<model>``."""
    return instantiate(compose_config(model, image_size, overrides).model.net)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA), a no-op on the CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@torch.inference_mode()
def time_forward(
    nets: Sequence[nn.Module], x: Tensor, iters: int, warmup: int, sync: Callable[[], None]
) -> list[list[float]]:
    """Seconds per forward pass of each network, run in turn (order alternating) on ``x``."""
    times: list[list[float]] = [[] for _ in nets]
    for i in range(warmup + iters):
        order = range(len(nets)) if i % 2 == 0 else reversed(range(len(nets)))
        for k in order:
            sync()
            start = time.perf_counter()
            nets[k](x)
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def max_output_difference(a: nn.Module, b: nn.Module, x: Tensor) -> list[tuple[float, float]]:
    """``(max |a - b|, max |a|)`` of each output (loc, conf) of two networks on ``x``.

    The magnitude puts the difference in scale: untrained networks with default BN statistics
    reach outputs of 1e5, where float32 rounding alone differs by more than 0.1.
    """
    return [
        ((p - q).abs().max().item(), p.abs().max().item()) for p, q in zip(a(x), b(x), strict=True)
    ]


def write_profile(
    run: Callable[[], object], device: torch.device, out: Path, top: int = 5
) -> list[dict[str, float | str]]:
    """Profile one call of ``run`` with ``torch.profiler``; the ``top`` operators by self time.

    Writes ``<out>.trace.json`` (open in chrome://tracing or Perfetto) and ``<out>.txt`` (the
    operator table). On a GPU the operators are ranked by their self GPU time, else by CPU time.
    """
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out.with_suffix(".trace.json")))
    out.with_suffix(".txt").write_text(events.table(sort_by=key, row_limit=30))
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total}
        for e in ranked
    ]


def endless(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def loader_images_per_second(loader: DataLoader, batches: int) -> float:
    """Images/s of the DataLoader alone, after one untimed batch (which starts the workers)."""
    stream = endless(loader)
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * loader.batch_size / (time.perf_counter() - start)
