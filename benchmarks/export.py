"""Speed of an exported detector: onnxruntime and TorchScript against PyTorch eager, in one run.

Each model (``conf/model/<name>.yaml``, untrained, VOC's 21 classes) or checkpoint (``--ckpt``)
is BN-folded and exported to ONNX and TorchScript (``dssd.deployment.export``, decoding and NMS
inside the graph) in a temporary directory. The three then take turns on the same seeded noise
images at each batch size (``time_in_turn``), and the table gives images/s and the ratio of each
export to the eager baseline, which is what ``Detector.predict`` runs: the folded network and the
``PostProcessor``. onnxruntime uses as many threads as torch.

Untrained networks score almost every default box above 0.01, so NMS works on the full top 400
per class; a trained checkpoint on noise leaves NMS little to do and times the network.

    python -m benchmarks.export                                    # dssd321
    python -m benchmarks.export --ckpt logs/train/runs/<run>/checkpoints/last.ckpt
    python -m benchmarks.export --models ssd_r18 --batches 1 8 --iters 10 --json export.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from benchmarks.common import (
    add_models_argument,
    compose_config,
    environment,
    median,
    time_in_turn,
)
from dssd.deployment.detector import Detector
from dssd.deployment.export import FORMATS, ExportableDetector, ExportedModel, export_module
from dssd.errors import user_errors
from dssd.models import fold_batchnorm
from dssd.ops import PostProcessor
from dssd.tools import HelpFormatter, at_least, check_outputs
from dssd.tools.network_table import spec_overrides

# the paper's Table 7 model; more with e.g. --models ssd321:pm=c dssd321 (SSD321 with
# prediction module (c), as in benchmarks.speed)
DEFAULT_MODELS = ("dssd321",)
RUNTIMES = ("eager", "onnxruntime", "torchscript")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    add_models_argument(parser, DEFAULT_MODELS, "ssd321:pm=c", "; ignored with --ckpt")
    parser.add_argument("--ckpt", help="a checkpoint of src/train.py instead of --models")
    parser.add_argument(
        "--batches", nargs="+", type=at_least(1), default=[1, 8], help="batch sizes timed"
    )
    parser.add_argument("--iters", type=at_least(1), default=3, help="timed passes per batch size")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed passes first")
    parser.add_argument(
        "--threads",
        type=at_least(1),
        help="torch and onnxruntime threads (default: torch's own; onnxruntime uses as many)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out, "--json": args.json})
    return args


def untrained(spec: str) -> tuple[str, nn.Module, PostProcessor, int]:
    """A ``--models`` entry (``ssd321:pm=c``), untrained, with VOC's classes."""
    name = spec.partition(":")[0]
    cfg = compose_config(name, overrides=["data=voc0712", *spec_overrides(spec)[1:]])
    net = instantiate(cfg.model.net)
    return spec, net, instantiate(cfg.model.postprocess), int(cfg.model.net.image_size)


def from_checkpoint(path: str) -> tuple[str, nn.Module, PostProcessor, int]:
    """The checkpoint's network (not yet folded) and post-processor."""
    detector = Detector.from_checkpoint(path, fold_bn=False)
    return Path(path).name, detector.module.net, detector.module.postprocess, detector.image_size


def benchmark(
    label: str, net: nn.Module, post: PostProcessor, size: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Images/s of each runtime at each batch size for one network."""
    net = fold_batchnorm(net.eval())
    module = ExportableDetector(net, post).eval()
    info = {"class_names": [str(c) for c in range(net.num_classes)], "input": {"image_size": size}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for runtime, fmt in (("onnxruntime", "onnx"), ("torchscript", "torchscript")):
            path = export_module(module, fmt, Path(tmp) / f"model{FORMATS[fmt]}", size, info)
            runners[runtime] = ExportedModel(path, threads=torch.get_num_threads())
        for batch in args.batches:
            images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            orig_sizes = torch.tensor([[size, size]] * batch)

            def eager(images=images, orig_sizes=orig_sizes):
                with torch.no_grad():
                    return post(*net(images), net.priors, orig_sizes)

            runs = [
                [eager],
                [lambda images=images: runners["onnxruntime"](images)],
                [lambda images=images: runners["torchscript"](images)],
            ]
            times = time_in_turn(runs, args.iters, args.warmup)
            speeds = {name: batch / median(t[0]) for name, t in zip(RUNTIMES, times, strict=True)}
            rows.append({"model": label, "batch": batch, "images_per_s": speeds})
            print(f"{label} batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in speeds.items()))
    return rows


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: images/s per runtime, and each export's ratio to eager."""
    lines = [
        "| model | batch | eager img/s | onnxruntime img/s | torchscript img/s "
        "| onnxruntime / eager | torchscript / eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["images_per_s"]
        lines.append(
            f"| {row['model']} | {row['batch']} | {s['eager']:.2f} | {s['onnxruntime']:.2f} "
            f"| {s['torchscript']:.2f} | {s['onnxruntime'] / s['eager']:.2f}x "
            f"| {s['torchscript'] / s['eager']:.2f}x |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    with user_errors():
        args = parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        env = environment(torch.device("cpu"))
        models = [from_checkpoint(args.ckpt)] if args.ckpt else [untrained(m) for m in args.models]
        rows = [row for spec in models for row in benchmark(*spec, args)]
        text = "\n".join(
            [
                "## Exported detector: onnxruntime and TorchScript against PyTorch eager (CPU)",
                "",
                f"- device: {env['device']}, torch {env['torch']}, {env['threads']} threads, "
                f"median of {args.iters} passes after {args.warmup} warm-up",
                "- eager: the folded network + PostProcessor (Detector.predict); the exports: "
                "the folded network with decoding and NMS in the graph",
                "",
                *table(rows),
            ]
        )
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        result = {"environment": env, "rows": rows}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return result


if __name__ == "__main__":
    main()
