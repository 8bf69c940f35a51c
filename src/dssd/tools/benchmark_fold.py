"""Time detector inference with and without batch-norm folding (DSSD paper, Eq. 1-4).

The network is built from the project's Hydra config (``conf/model/<name>.yaml``, untrained
weights: the timing does not depend on them), then the unfolded and the folded networks run
eval-mode forward passes in turn, so that both see the same machine load. The paper reports a
1.2-1.5x speed-up from folding.

    python -m dssd.tools.benchmark_fold --model ssd321 --batch-size 1 --iters 20
    python -m dssd.tools.benchmark_fold --model dssd321 --threads 8 data=voc
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor, nn

from dssd.config import register_resolvers
from dssd.models import count_batchnorms, fold_batchnorm

ROOT = Path(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[3]))
CONF = ROOT / "conf"


def build_net(model: str, image_size: int | None, overrides: Sequence[str] = ()) -> nn.Module:
    """Instantiate ``model.net`` of ``conf/train.yaml`` with ``model=<model>``.

    Only the network is built: the rest of the config (``paths.output_dir`` above all) needs a
    running Hydra app to resolve.
    """
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    register_resolvers()
    overrides = [f"model={model}", *overrides]
    if image_size is not None:
        overrides.append(f"model.net.image_size={image_size}")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return instantiate(cfg.model.net)


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    models = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.benchmark_fold", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="ssd321", choices=models, help="conf/model/<name>")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20, help="timed passes per network")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes per network")
    parser.add_argument("--image-size", type=int, help="input size (default: the model's)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data=voc")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"

    net = build_net(args.model, args.image_size, args.overrides).to(device).eval()
    folded = fold_batchnorm(net)
    x = torch.randn(args.batch_size, 3, net.image_size, net.image_size, device=device)
    sync = torch.cuda.synchronize if cuda else lambda: None
    times = time_forward([net, folded], x, args.iters, args.warmup, sync)
    medians = [statistics.median(t) for t in times]
    differences = max_output_difference(net, folded, x)

    print(
        f"{'model':<10} {'device':<24} {'threads':>7} {'batch':>5} {'input':>5} "
        f"{'network':<9} {'median ms':>10} {'images/s':>9}"
    )
    for name, median in zip(["unfolded", "folded"], medians, strict=True):
        print(
            f"{args.model:<10} {device_name:<24} {torch.get_num_threads():>7} "
            f"{args.batch_size:>5} {net.image_size:>5} {name:<9} {median * 1e3:>10.1f} "
            f"{args.batch_size / median:>9.2f}"
        )
    print(f"speed ratio unfolded / folded: {medians[0] / medians[1]:.3f}x")
    left = count_batchnorms(folded)
    print(f"BNs folded: {count_batchnorms(net) - left}, left: {left}")
    for name, (diff, magnitude) in zip(["loc", "conf"], differences, strict=True):
        print(
            f"max |output difference| {name}: {diff:.2e} "
            f"(max |output| {magnitude:.2e}, relative {diff / magnitude:.1e})"
        )


if __name__ == "__main__":
    main()
