"""The CPU-sized network search: what each candidate network for the embedded data costs.

The default experiment (``experiment=shapes``) trains from scratch on 2 CPU cores, so its network
is chosen by measurement: for each candidate (``CANDIDATES``: the same SSD code paths as the
paper's networks, only input size, backbone width, extra-layer and prediction-module channels and
default-box scales differ) this prints

- default boxes and GMAC per image (one forward pass, ``torch.utils.flop_counter``);
- the share of the embedded training objects its default boxes reach (best IoU > 0.5, the
  ``dssd.tools.anchor_coverage`` measure);
- seconds per training step (forward, MultiBoxLoss, backward, AdamW step, as in
  ``benchmarks.speed``) at the experiment's batch (or each of several, ``--batch 8 4``), in
  float32 and in bf16 autocast + channels-last, and each as a ratio to the first row measured in
  the same run.

The candidates' accuracy comes from training them (docs/reproducing.md, "The CPU-sized network").

    python -m benchmarks.search
    python -m benchmarks.search --candidates r18w64-193 r18w32-321 --iters 5
    python -m benchmarks.search --candidates r18w16-321 --batch 8 4 --no-bf16
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities import move_data_to_device

from benchmarks.common import compose_config, environment, median, random_targets, time_in_turn
from benchmarks.speed import images, training_step
from dssd.errors import user_errors
from dssd.models.cost import gmac
from dssd.tools import HelpFormatter, at_least, check_outputs
from dssd.tools.anchor_coverage import measure
from dssd.training.module import channels_last_hazards

# the recipe the candidates were trained with for the accuracy column (docs/reproducing.md)
RECIPE = "experiment=shapes_r18w32"


def _candidate(width: int, size: int) -> list[str]:
    """A ResNet-18 of ``width`` at a ``size`` input with default boxes from 0.05 of it; below width
    32 the extra layers and prediction modules narrow with it (4w / 8w and 2w / 8w channels)."""
    overrides = [
        f"model.net.backbone.width={width}",
        f"model.net.image_size={size}",
        "model.net.scales=[0.05,0.12,0.25,0.45,0.7,0.92]",
    ]
    if width < 32:
        overrides += [
            f"model.net.extras.mid_channels={4 * width}",
            f"model.net.extras.out_channels={8 * width}",
            f"model.net.prediction_module.mid_channels={2 * width}",
            f"model.net.prediction_module.out_channels={8 * width}",
        ]
    return overrides


# candidate -> overrides of conf/train.yaml with model=ssd_r18 and RECIPE; after r18w16-321 (the
# chosen one), the cheaper ones measured for Table 4's time budget
CANDIDATES: dict[str, list[str]] = {
    "r18w64-193": [],
    "r18w32-193": ["model.net.backbone.width=32"],
    **{
        f"r18w{width}-{size}": _candidate(width, size)
        for width, size in [(32, 257), (32, 321), (24, 321), (16, 321)]
        + [(16, 257), (8, 321), (8, 257)]
    },
}


def seconds_per_step(
    cfgs: Sequence[tuple[Any, int]], iters: int, warmup: int, bf16: bool
) -> list[float]:
    """Median seconds per training step of each (candidate's config, batch), all timed in turn;
    bf16 in channels-last layout, except for networks oneDNN cannot train so (width 8)."""
    runs = []
    for cfg, batch in cfgs:
        net = instantiate(cfg.model.net)  # training_step puts it in args.channels_last's layout
        args = SimpleNamespace(device=torch.device("cpu"), bf16=bf16, compile=False, seed=0)
        args.channels_last = bf16 and not channels_last_hazards(net)
        x = images(batch, net.image_size, args)
        targets = move_data_to_device(random_targets(batch, net.num_classes, seed=0), x.device)
        runs.append([functools.partial(training_step(net, cfg, args), x, targets)])
    times = time_in_turn(runs, iters, warmup)
    return [median(stages[0]) for stages in times]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=list(CANDIDATES),
        choices=list(CANDIDATES),
        help="the networks timed",
    )
    parser.add_argument(
        "--batch",
        type=at_least(1),
        nargs="+",
        default=[16],
        help="training batch; several: one row each",
    )
    parser.add_argument("--iters", type=at_least(1), default=5, help="timed steps per precision")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed steps before timing")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 timing")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="Hydra overrides for every candidate, e.g. data.root=DIR",
    )
    args = parser.parse_args(argv)
    if swapped := [o for o in args.overrides if o.lstrip("+~").startswith("model=")]:
        parser.error(
            f"{swapped[0]}: the candidates are model=ssd_r18 at the widths and sizes their names "
            "say; give overrides of its keys (model.net.*) instead"
        )
    check_outputs(parser, {"--json": args.json})
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    with user_errors():
        args = parse_args(argv)
        env = environment(torch.device("cpu"))
        print(f"network search on {env['device']}", flush=True)
        start = time.perf_counter()
        cfgs = [
            compose_config("ssd_r18", None, [RECIPE, *CANDIDATES[name], *args.overrides])
            for name in args.candidates
        ]
        rows = []
        for name, cfg in zip(args.candidates, cfgs, strict=True):
            net = instantiate(cfg.model.net)
            report, *_ = measure(net, cfg.data, "train", 0.5)
            cost = {
                "image_size": net.image_size,
                "default_boxes": int(net.priors.shape[0]),
                "gmac": gmac(net),
                "covered": report["covered"],
            }
            rows += [{"candidate": name, "batch": batch, **cost} for batch in args.batch]
        timed = [(cfg, batch) for cfg in cfgs for batch in args.batch]  # in the rows' order
        precisions = ["float32"] if args.no_bf16 else ["float32", "bf16"]
        for precision in precisions:
            times = seconds_per_step(timed, args.iters, args.warmup, precision == "bf16")
            for row, seconds in zip(rows, times, strict=True):
                row[f"s_per_step_{precision}"] = seconds
                row[f"ratio_{precision}"] = seconds / times[0]
        header = ["candidate", "input", "default boxes", "GMAC/img", "objects reached %", "batch"]
        header += [f"s/step {p} (x first)" for p in precisions]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [
                r["candidate"],
                str(r["image_size"]),
                f"{r['default_boxes']:,}",
                f"{r['gmac']:.2f}",
                f"{100 * r['covered']:.1f}",
                str(r["batch"]),
            ]
            cells += [f"{r[f's_per_step_{p}']:.3f} ({r[f'ratio_{p}']:.2f})" for p in precisions]
            lines.append("| " + " | ".join(cells) + " |")
        print(f"\nmedian of {args.iters} steps after {args.warmup} untimed\n")
        print("\n".join(lines))
        print(f"\n(wall time {time.perf_counter() - start:.0f} s)")
        if args.json is not None:
            args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
        return rows


if __name__ == "__main__":
    main()
