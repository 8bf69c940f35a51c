"""Time detector inference with and without batch-norm folding (DSSD paper, Eq. 1-4).

The network is built from the project's Hydra config (``conf/model/<name>.yaml``, untrained
weights: the timing does not depend on them), then the unfolded and the folded networks run
eval-mode forward passes in turn, so that both see the same machine load. The paper reports a
1.2-1.5x speed-up from folding. ``python -m dssd.tools.benchmark`` is the full Table 7 (all
models, batch 1 and a large batch, with post-processing and training).

    python -m dssd.tools.benchmark_fold --model ssd321 --batch-size 1 --iters 20
    python -m dssd.tools.benchmark_fold --model dssd321 --threads 8 data=voc
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch

from dssd.models import count_batchnorms, fold_batchnorm
from dssd.tools.timing import (
    build_net,
    max_output_difference,
    model_names,
    synchronizer,
    time_forward,
)

__all__ = ["build_net", "main", "max_output_difference", "time_forward"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    models = model_names()
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
    sync = synchronizer(device)
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
