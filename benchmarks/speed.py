"""Speed of the detectors, in the layout of the DSSD paper's Table 7.

For each model (``conf/model/<name>.yaml``, untrained weights, VOC's 21 classes by default:
the timing depends on the shapes only) it prints the number of default boxes and images/s

- inference: at batch 1 and at a large batch, with BN unfolded and folded
  (``dssd.models.fold_batchnorm``), for the forward pass alone and for forward + decode + NMS (the
  model's ``PostProcessor``, with the paper's settings: score > 0.01, top 400 per class, NMS 0.45,
  200 per image);
- training: forward + MultiBoxLoss + backward + a step of the config's optimiser
  (``model.optimizer``, the paper's SGD by default) in Lightning's precision (32-true, or
  bf16-mixed with ``--bf16``), on random targets; then the same step fed by the training
  DataLoader of a data config (``--train-data``, default ``shapes``: the real augmentation
  pipeline, workers and collate as in training), with the loader's own images/s and the share of
  the step spent waiting for data, which name the bottleneck;
- with ``--profile DIR``: a ``torch.profiler`` trace and op table of a fed training step and of
  a folded forward + NMS pass per model, to see which operators the time goes to;
- loader (``--only loader``): the training DataLoader of ``--train-data`` alone, at each model's
  input size and each worker count of ``--loader-workers``.

The input is random images (normal noise), so the networks are untrained and the class scores
nearly uniform: almost every default box passes the 0.01 score threshold and NMS works on the
full ``top_k`` per class, more than a trained detector leaves it. ``--score-threshold`` changes
the threshold to see the cost of NMS on fewer candidates. The unfolded and folded networks run
in turn (order alternating) so that both see the same machine load; each figure is the median
of the timed passes, after untimed warm-up passes.

    python -m benchmarks.speed                                 # CPU, float32
    python -m benchmarks.speed --bf16 --channels-last --large-batch 64 --compile   # GPU
    python -m benchmarks.speed --models dssd321 --out speed.md --json speed.json
    python -m benchmarks.speed --models dssd321 --profile profiles data.num_workers=12
    python -m benchmarks.speed --models dssd321 --only inference --large-batch 1 --iters 20
    python -m benchmarks.speed --only loader --models ssd321 ssd513 --train-data voc0712
    python -m benchmarks.speed --models dssd321 dssd321:neck=fpn dssd321:neck=bifpn  # the necks
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from benchmarks.common import (
    CONF,
    add_models_argument,
    compose_config,
    environment,
    median,
    random_targets,
    synchronizer,
    time_in_turn,
)
from dssd.errors import UserError, user_errors
from dssd.models import count_batchnorms, fold_batchnorm
from dssd.tools import HelpFormatter, at_least, check_outputs
from dssd.tools.network_table import spec_overrides
from dssd.training.module import check_channels_last_training

DEFAULT_MODELS = ("ssd321", "dssd321", "ssd513", "dssd513", "ssd300_vgg")
# The paper's SSD321 and SSD513 rows (Tables 3, 6 and 7) include prediction module (c).
PAPER_VARIANTS = {"ssd321": ("pm=c",), "ssd513": ("pm=c",)}
SECTIONS = ("inference", "training", "loader")
# Per device: large batch, training batch, timed passes at batch 1 / large batch / training,
# warm-up passes. The CPU defaults keep `make bench` near 10 minutes on 2 cores.
DEFAULTS = {
    "cpu": {
        "large_batch": 8,
        "train_batch": 4,
        "iters": 5,
        "iters_large": 2,
        "train_iters": 2,
        "warmup": 1,
    },
    "cuda": {
        "large_batch": 64,
        "train_batch": 32,
        "iters": 50,
        "iters_large": 20,
        "train_iters": 20,
        "warmup": 10,
    },
}
QUICK = {"iters": 1, "iters_large": 1, "train_iters": 1, "warmup": 0}
# Config groups unless the overrides choose them: VOC's 21 classes, the paper's SGD
# (conf/optimizer/sgd.yaml; the default experiment's is AdamW) for the training step, and no
# experiment, so that the fed training reads the data config's own loader (SSD augmentation, its
# workers), not the CPU recipe's (experiment=shapes: resize and flip only, in the main process).
GROUPS = {"data": "voc0712", "optimizer": "sgd", "experiment": None}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    add_models_argument(parser, DEFAULT_MODELS, "dssd_r18:neck=fpn")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=["inference", "training"], help="sections"
    )
    parser.add_argument("--large-batch", type=at_least(1), help="default: 8 on CPU, 64 on GPU")
    parser.add_argument(
        "--train-batch",
        type=at_least(0),
        help="training and loader batch (CPU 4, GPU 32); 0: no training",
    )
    parser.add_argument("--iters", type=at_least(1), help="timed passes at batch 1 (CPU 5, GPU 50)")
    parser.add_argument("--iters-large", type=at_least(1), help="timed passes at the large batch")
    parser.add_argument("--train-iters", type=at_least(1), help="timed training steps")
    parser.add_argument(
        "--warmup",
        type=at_least(0),
        help="untimed passes before each timing (with --compile at least 1: the first compiles)",
    )
    parser.add_argument("--quick", action="store_true", help="one pass each, no warm-up (smoke)")
    parser.add_argument("--bf16", action="store_true", help="Lightning's bf16-mixed precision")
    parser.add_argument("--channels-last", action="store_true", help="channels-last tensors")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=at_least(1), help="CPU threads (default: torch's)")
    parser.add_argument("--image-size", type=int, help="input size (default: the model's)")
    parser.add_argument(
        "--score-threshold", type=float, help="post-processing score threshold (default: 0.01)"
    )
    parser.add_argument(
        "--train-data",
        default="shapes",
        help="data config (conf/data/) whose training DataLoader feeds the fed training row and "
        "the loader section, its size and workers from the config (override with "
        "data.num_workers=...); 'none' skips the fed row",
    )
    parser.add_argument(
        "--loader-workers",
        type=at_least(0),
        nargs="+",
        default=[0, 1, 2],
        help="loader section's workers",
    )
    parser.add_argument(
        "--loader-batches", type=at_least(1), default=20, help="timed batches per loader row"
    )
    parser.add_argument(
        "--profile", type=Path, help="write a profiler trace and op table per model here"
    )
    parser.add_argument("--seed", type=int, default=0, help="of the weights, inputs and targets")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="Hydra overrides for every model; data=voc0712 and optimizer=sgd unless they "
        "choose those groups",
    )
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out, "--json": args.json}, {"--profile": args.profile})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        args.device = torch.device(device)
    except RuntimeError:
        parser.error(f"--device {device}: give cpu, cuda or cuda:<index>")
    if args.device.type == "cuda" and (args.device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()})")
    defaults = dict(DEFAULTS["cuda" if args.device.type == "cuda" else "cpu"])
    if args.quick:
        defaults.update(QUICK)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.compile:  # else the compilation is timed (--quick has no warm-up)
        args.warmup = max(args.warmup, 1)
    fed = args.train_data != "none" and ({"training", "loader"} & set(args.only))
    if fed and not (CONF / "data" / f"{args.train_data}.yaml").is_file():
        parser.error(f"--train-data {args.train_data}: no such data config (conf/data/)")
    if "loader" in args.only and (args.train_batch < 1 or args.train_data == "none"):
        parser.error("--only loader needs --train-batch >= 1 and a --train-data config")
    if args.train_batch == 1 and "training" in args.only:
        parser.error(
            "--train-batch 1: batch norm cannot train on batches of one image; give 2 or more"
        )
    if args.only == ["training"] and args.train_batch == 0:
        parser.error(
            "--only training with --train-batch 0 times nothing; give a batch of 2 or more"
        )
    if args.score_threshold is not None and not 0 <= args.score_threshold < 1:
        parser.error(f"--score-threshold {args.score_threshold}: give a score in [0, 1)")
    chosen = {o.lstrip("+~").split("=", 1)[0] for o in args.overrides}
    groups = [
        f"{group}={choice}" if choice else f"~{group}"
        for group, choice in GROUPS.items()
        if group not in chosen
    ]
    args.overrides = [*groups, *args.overrides]
    return args


def describe(args: argparse.Namespace) -> dict[str, Any]:
    """What the figures were measured on and how."""
    return {
        **environment(args.device),
        "precision": "bf16 autocast" if args.bf16 else "float32",
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "compile": args.compile,
        "input": "random images (normal noise), untrained weights",
        "overrides": list(args.overrides),
        "sections": list(args.only),
        "train_data": args.train_data,
        "profile": str(args.profile) if args.profile else None,
        "large_batch": args.large_batch,
        "train_batch": args.train_batch,
        "iters": {"batch_1": args.iters, "large": args.iters_large, "train": args.train_iters},
        "warmup": args.warmup,
    }


def precision(args: argparse.Namespace) -> Precision:
    """Lightning's precision plugin, as the Trainer builds it for ``precision="bf16-mixed"``
    (``--bf16``: bfloat16 autocast) or ``"32-true"``."""
    return MixedPrecision("bf16-mixed", args.device.type) if args.bf16 else Precision()


def prepare(net: nn.Module, args: argparse.Namespace) -> nn.Module:
    """The network in the chosen memory format, compiled if asked."""
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return torch.compile(net) if args.compile else net


def images(batch: int, size: int, args: argparse.Namespace) -> Tensor:
    x = torch.randn(batch, 3, size, size, device=args.device)
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


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
    # names are added to, not replaced: a model's overrides may hold dots
    prof.export_chrome_trace(f"{out}.trace.json")
    Path(f"{out}.txt").write_text(events.table(sort_by=key, row_limit=30))
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total}
        for e in ranked
    ]


@torch.inference_mode()
def time_inference(
    nets: Sequence[nn.Module],
    postprocess: nn.Module,
    priors: Tensor,
    x: Tensor,
    iters: int,
    warmup: int,
    sync: Callable[[], None],
    args: argparse.Namespace,
) -> list[dict[str, float]]:
    """Median seconds per batch of each network: forward alone and forward + post-processing,
    from the same passes (the networks in turn, order alternating)."""
    sizes = torch.tensor([[x.shape[2], x.shape[3]]], device=x.device).expand(x.shape[0], 2)
    detections: list[list[float]] = [[] for _ in nets]

    def run(k: int) -> list[Callable[..., Any]]:
        def post(outputs: tuple[Tensor, Tensor]) -> None:
            dets = postprocess(*outputs, priors, sizes)
            detections[k].append(sum(len(d["scores"]) for d in dets) / x.shape[0])

        return [functools.partial(nets[k], x), post]

    with precision(args).predict_step_context():
        times = time_in_turn([run(k) for k in range(len(nets))], iters, warmup, sync)
    return [
        {
            "forward_s": median(forward),
            "total_s": median(total),
            # the warm-up passes' counts too: the input is the same every pass
            "detections_per_image": median(count),
        }
        for (forward, total), count in zip(times, detections, strict=True)
    ]


@torch.inference_mode()
def detect(
    net: nn.Module, postprocess: nn.Module, priors: Tensor, x: Tensor, args: argparse.Namespace
) -> list[dict[str, Tensor]]:
    """Forward + decode + NMS of one batch, as timed by :func:`time_inference`."""
    sizes = torch.tensor([[x.shape[2], x.shape[3]]], device=x.device).expand(x.shape[0], 2)
    with precision(args).predict_step_context():
        loc, conf = net(x)
        return postprocess(loc, conf, priors, sizes)


def training_step(
    net: nn.Module, cfg: DictConfig, args: argparse.Namespace
) -> Callable[[Tensor, list[dict[str, Tensor]]], None]:
    """One training step on a batch as Lightning runs it: forward and ``cfg.model.loss`` in the
    precision plugin's training context, backward, then a step of the config's optimiser
    (``cfg.model.optimizer`` over the trainable parameters, as
    ``DetectionModule.configure_optimizers`` builds it); ``net`` is put in training mode."""
    if args.channels_last and args.device.type == "cpu":
        check_channels_last_training(net)
    model = prepare(net.train(), args)
    priors = net.priors
    loss = instantiate(cfg.model.loss)
    optimizer = instantiate(cfg.model.optimizer)(
        params=[p for p in net.parameters() if p.requires_grad]
    )
    plugin = precision(args)

    def step(x: Tensor, targets: list[dict[str, Tensor]]) -> None:
        with plugin.train_step_context():
            loc, conf = model(x)
            losses = loss(loc, conf, priors, targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    return step


def time_training(
    net: nn.Module,
    cfg: DictConfig,
    batch: int,
    iters: int,
    warmup: int,
    sync: Callable[[], None],
    args: argparse.Namespace,
) -> float:
    """Median seconds per training step on one random batch, reused for every step."""
    x = images(batch, net.image_size, args)
    targets = move_data_to_device(random_targets(batch, net.num_classes, seed=args.seed), x.device)
    step = training_step(net, cfg, args)
    ((times,),) = time_in_turn([[functools.partial(step, x, targets)]], max(iters, 1), warmup, sync)
    net.eval()
    return median(times)


def model_config(spec: str, image_size: int | None, overrides: Sequence[str]) -> DictConfig:
    """The config of a ``--models`` entry as the paper's tables time it (``PAPER_VARIANTS``),
    with the entry's own overrides after the benchmark's."""
    name = spec.partition(":")[0]
    own = spec_overrides(spec)[1:]
    return compose_config(name, image_size, [*PAPER_VARIANTS.get(name, ()), *overrides, *own])


def fed_overrides(args: argparse.Namespace) -> list[str]:
    """The benchmark's overrides with the data config replaced by ``--train-data``."""
    kept = [o for o in args.overrides if not o.lstrip("+~").startswith("data=")]
    return [f"data={args.train_data}", *kept]


def training_loader(cfg: DictConfig, batch: int) -> DataLoader:
    """The training DataLoader of ``cfg.data`` (augmentation, workers, collate as in training)."""
    cfg.data.batch_size = batch
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    images = len(datamodule.datasets["train"])
    if images < batch:  # said before the datamodule does, with this command's option
        raise UserError(
            f"{cfg.data.root}: {images} training images, fewer than one batch of {batch}; "
            "lower --train-batch"
        )
    return datamodule.train_dataloader()


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


def to_device(
    batch: tuple[Tensor, list[dict[str, Any]]], args: argparse.Namespace
) -> tuple[Tensor, list[dict[str, Any]]]:
    """A collated batch on the benchmark's device (and memory format), moved by Lightning's own
    ``move_data_to_device``, as in training."""
    x, targets = move_data_to_device(batch, args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, targets


def time_fed_training(
    net: nn.Module,
    cfg: DictConfig,
    loader: DataLoader,
    iters: int,
    warmup: int,
    sync: Callable[[], None],
    args: argparse.Namespace,
) -> dict[str, float]:
    """Training steps fed by the DataLoader: images/s and the share spent waiting for a batch.

    The clock runs from asking the loader for a batch to the end of the optimiser step; the
    wait is the part until the batch is on the device. At least one untimed step starts the
    loader's workers.
    """
    step = training_step(net, cfg, args)
    stream = endless(loader)
    fed = [lambda: to_device(next(stream), args), lambda batch: step(*batch)]
    ((waits, totals),) = time_in_turn([fed], max(iters, 1), max(warmup, 1), sync)
    net.eval()
    return {
        "images_per_s": len(totals) * loader.batch_size / sum(totals),
        "wait_share": sum(waits) / sum(totals),
    }


def fed_training(
    name: str, args: argparse.Namespace, synthetic_images_per_s: float, num_classes: int
) -> dict[str, Any]:
    """The training row fed by ``--train-data``'s loader, the loader alone and the bottleneck.

    The pipeline cannot run faster than the slower of its two halves: the loader alone and
    the training step on a batch already in memory (the synthetic row); that one is named. The
    network is the synthetic row's, ``num_classes`` included, whatever classes the data has.
    """
    cfg = model_config(name, args.image_size, fed_overrides(args))
    cfg.model.net.num_classes = num_classes
    net = instantiate(cfg.model.net).to(args.device)
    loader = training_loader(cfg, args.train_batch)
    sync = synchronizer(args.device)
    # enough batches that the workers' prefetched ones do not dominate the figure
    loader_rate = loader_images_per_second(
        loader, max(args.train_iters, 4 * max(1, loader.num_workers))
    )
    fed = time_fed_training(net, cfg, loader, args.train_iters, args.warmup, sync, args)
    compute = "GPU compute" if args.device.type == "cuda" else "CPU compute"
    result = {
        "data": args.train_data,
        "num_classes": net.num_classes,
        "workers": loader.num_workers,
        "batch": args.train_batch,
        "images_per_s": fed["images_per_s"],
        "wait_share": fed["wait_share"],
        "loader_images_per_s": loader_rate,
        "bottleneck": "data loading" if loader_rate < synthetic_images_per_s else compute,
    }
    if args.profile is not None:
        # three steps in the trace: one warm-up (which starts the loader's workers), two timed
        result["profile"] = write_profile(
            lambda: time_fed_training(net, cfg, loader, 2, 1, sync, args),
            args.device,
            args.profile / f"{name}_training",
        )
    return result


def benchmark_inference(
    name: str, net: nn.Module, cfg: DictConfig, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    """Inference figures of one model (unfolded and folded, batch 1 and large) into ``result``."""
    postprocess = instantiate(cfg.model.postprocess)
    folded = fold_batchnorm(net)
    sync = synchronizer(args.device)
    priors = net.priors
    result["batchnorms"] = count_batchnorms(net)
    result["batchnorms_left_folded"] = count_batchnorms(folded)
    result["score_threshold"] = float(postprocess.score_threshold)
    result["postprocess"] = {
        "top_k": int(postprocess.top_k),
        "nms_iou": float(postprocess.nms_iou),
        "max_detections": int(postprocess.max_detections),
    }
    result["inference"] = []
    # Outputs of the folded network against the unfolded one (float32, contiguous, eager).
    x = torch.randn(1, 3, net.image_size, net.image_size, device=args.device)
    result["output_difference"] = {
        key: {"max_abs_diff": diff, "max_abs": magnitude}
        for key, (diff, magnitude) in zip(
            ("loc", "conf"), max_output_difference(net, folded, x), strict=True
        )
    }
    nets = [prepare(net, args), prepare(folded, args)]
    # batch 1 takes --iters, also when --large-batch is 1
    for batch, iters in sorted({args.large_batch: args.iters_large, 1: args.iters}.items()):
        x = images(batch, net.image_size, args)
        timed = time_inference(nets, postprocess, priors, x, iters, args.warmup, sync, args)
        for bn, t in zip(("unfolded", "folded"), timed, strict=True):
            result["inference"].append(
                {
                    "batch": batch,
                    "bn": bn,
                    **t,
                    "forward_images_per_s": batch / t["forward_s"],
                    "total_images_per_s": batch / t["total_s"],
                }
            )
        print(
            f"  {name} batch {batch}: fwd img/s unfolded {batch / timed[0]['forward_s']:.2f}, "
            f"folded {batch / timed[1]['forward_s']:.2f}; fwd+NMS unfolded "
            f"{batch / timed[0]['total_s']:.2f}, folded {batch / timed[1]['total_s']:.2f}",
            flush=True,
        )
    if args.profile is not None:
        # the folded network at the large batch (x), forward + decode + NMS
        result.setdefault("profile", {})["inference"] = write_profile(
            functools.partial(detect, nets[1], postprocess, priors, x, args),
            args.device,
            args.profile / f"{name}_inference",
        )


def benchmark_training(
    name: str, net: nn.Module, cfg: DictConfig, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    """Training figures of one model (in memory, then fed by the loader) into ``result``."""
    sync = synchronizer(args.device)
    step = time_training(net, cfg, args.train_batch, args.train_iters, args.warmup, sync, args)
    result["training"] = {
        "batch": args.train_batch,
        "optimizer": cfg.model.optimizer._target_.rsplit(".", 1)[-1],  # e.g. SGD
        "step_s": step,
        "images_per_s": args.train_batch / step,
    }
    print(
        f"  {name} training batch {args.train_batch}: {args.train_batch / step:.2f} img/s",
        flush=True,
    )
    if args.train_data == "none":
        return
    fed = result["fed_training"] = fed_training(
        name, args, args.train_batch / step, net.num_classes
    )
    if "profile" in fed:
        result.setdefault("profile", {})["training"] = fed.pop("profile")
    print(
        f"  {name} training fed by data={fed['data']} ({fed['workers']} workers): "
        f"{fed['images_per_s']:.2f} img/s, {100 * fed['wait_share']:.0f}% waiting for "
        f"data; loader alone {fed['loader_images_per_s']:.1f} img/s; bottleneck: "
        f"{fed['bottleneck']}",
        flush=True,
    )


def benchmark_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one model, section by section."""
    torch.manual_seed(args.seed)
    cfg = model_config(name, args.image_size, args.overrides)
    if args.score_threshold is not None:
        cfg.model.postprocess.score_threshold = args.score_threshold
    net = instantiate(cfg.model.net).to(args.device).eval()
    result: dict[str, Any] = {
        "model": " ".join([name, *PAPER_VARIANTS.get(name, ())]),  # e.g. "ssd321 pm=c"
        "image_size": net.image_size,
        "num_classes": net.num_classes,
        "boxes": int(net.priors.shape[0]),
    }
    if "inference" in args.only:
        benchmark_inference(name, net, cfg, args, result)
    if "training" in args.only and args.train_batch > 0:
        benchmark_training(name, net, cfg, args, result)
    return result


def benchmark_loader(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The training DataLoader of ``--train-data`` alone, per input size of the models and per
    worker count of ``--loader-workers``.

    The main process runs with one torch thread like each worker, so the 0-worker row is one
    worker's worth of loading; the first batch of each row (starting the workers) is not timed.
    """
    sizes: dict[int, DictConfig] = {}
    for name in args.models:
        cfg = model_config(name, args.image_size, fed_overrides(args))
        sizes.setdefault(cfg.model.net.image_size, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for size, cfg in sorted(sizes.items()):
            for workers in args.loader_workers:
                cfg.data.num_workers = workers
                loader = training_loader(cfg, args.train_batch)
                rate = loader_images_per_second(loader, args.loader_batches)
                rows.append(
                    {
                        "image_size": size,
                        "data": args.train_data,
                        "workers": workers,
                        "batch": args.train_batch,
                        "images_per_s": rate,
                        # with 0 workers the main process does the work: one worker's worth
                        "images_per_s_per_worker": rate / max(workers, 1),
                    }
                )
                print(f"  loader {size}px, {workers} workers: {rate:.1f} img/s", flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def fold_ratios(result: dict[str, Any]) -> list[dict[str, float]]:
    """Folded / unfolded images/s per batch, forward alone and with post-processing."""
    rows = []
    by_batch: dict[int, dict[str, dict[str, float]]] = {}
    for row in result["inference"]:
        by_batch.setdefault(row["batch"], {})[row["bn"]] = row
    for batch, pair in sorted(by_batch.items()):
        rows.append(
            {
                "batch": batch,
                "forward": pair["unfolded"]["forward_s"] / pair["folded"]["forward_s"],
                "total": pair["unfolded"]["total_s"] / pair["folded"]["total_s"],
            }
        )
    return rows


def passes_line(env: dict[str, Any]) -> str:
    """How many passes each figure is the median of."""
    parts = []
    if "inference" in env["sections"]:
        parts.append(f"{env['iters']['batch_1']} timed passes at batch 1")
        if env["large_batch"] != 1:
            parts.append(f"{env['iters']['large']} at batch {env['large_batch']}")
    if "training" in env["sections"]:
        if env["train_batch"] > 0:
            parts.append(f"{env['iters']['train']} training steps at batch {env['train_batch']}")
        else:
            parts.append("no training")
    return f"- median of {', '.join(parts)}; {env['warmup']} warm-up passes before each"


def inference_tables(results: Sequence[dict[str, Any]]) -> list[str]:
    """Table 7's layout and the BN-folding speed-up."""
    settings = {(r["score_threshold"], *r["postprocess"].values()) for r in results}
    lines = [
        "- post-processing: "
        + "; ".join(
            f"score > {score:g}, top {top_k} per class, NMS {iou:g}, {most} per image"
            for score, top_k, iou, most in sorted(settings)
        )
        + " (untrained weights: at a low threshold nearly every box passes it)",
        "",
        "| model | input | boxes | batch | BN | fwd ms/batch | fwd img/s | fwd+NMS img/s "
        "| dets/img |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for row in r["inference"]:
            lines.append(
                f"| {r['model']} | {r['image_size']} | {r['boxes']:,} | {row['batch']} "
                f"| {row['bn']} | {row['forward_s'] * 1e3:.1f} "
                f"| {row['forward_images_per_s']:.2f} | {row['total_images_per_s']:.2f} "
                f"| {row['detections_per_image']:.0f} |"
            )
    lines += [
        "",
        "BN folding speed-up (folded images/s / unfolded images/s; the paper: 1.2-1.5x):",
        "",
        "| model | batch | fwd | fwd+NMS |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        for ratio in fold_ratios(r):
            lines.append(
                f"| {r['model']} | {ratio['batch']} | {ratio['forward']:.2f}x "
                f"| {ratio['total']:.2f}x |"
            )
    return lines


def training_table(trained: Sequence[dict[str, Any]]) -> list[str]:
    """In-memory and fed training steps, the loader's rate and the bottleneck."""
    optimizers = "/".join(sorted({r["training"]["optimizer"] for r in trained}))
    lines = [
        "",
        f"Training (forward + MultiBoxLoss + backward + {optimizers} step, BN unfolded): on one "
        "random batch in memory, then fed by the training DataLoader of `data=<data>` (its "
        "augmentation and workers), with the loader's own rate and the step's share spent "
        "waiting for data:",
        "",
        "| model | batch | ms/step | img/s | data | workers | fed img/s | waiting "
        "| loader img/s | bottleneck |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in trained:
        t = r["training"]
        row = f"| {r['model']} | {t['batch']} | {t['step_s'] * 1e3:.0f} "
        row += f"| {t['images_per_s']:.2f} "
        if "fed_training" in r:
            f = r["fed_training"]
            row += (
                f"| {f['data']} | {f['workers']} | {f['images_per_s']:.2f} "
                f"| {100 * f['wait_share']:.0f}% | {f['loader_images_per_s']:.1f} "
                f"| {f['bottleneck']} |"
            )
        else:
            row += "| - | - | - | - | - | - |"
        lines.append(row)
    return lines


def profile_table(env: dict[str, Any], profiled: Sequence[dict[str, Any]]) -> list[str]:
    """The top operators of each profiled run."""
    lines = [
        "",
        f"Profile (`--profile`; top operators by self {env['device_type'].upper()} time, "
        "share of the profiled time):",
        "",
        "| model | run | top operators |",
        "|---|---|---|",
    ]
    for r in profiled:
        for run, ops in r["profile"].items():
            top = ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%" for o in ops)
            lines.append(f"| {r['model']} | {run} | {top} |")
    return lines


def loader_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The training DataLoader alone, per input size and worker count."""
    lines = [
        "",
        "Data loading (the training DataLoader alone, its augmentation included; the main "
        "process with one thread, like each worker):",
        "",
        "| input | data | workers | batch | img/s | img/s per worker |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['image_size']} | {row['data']} | {row['workers']} | {row['batch']} "
            f"| {row['images_per_s']:.1f} | {row['images_per_s_per_worker']:.1f} |"
        )
    return lines


def markdown(
    env: dict[str, Any], results: Sequence[dict[str, Any]], loader: Sequence[dict[str, Any]] = ()
) -> str:
    """The tables: inference (Table 7's layout), BN-folding speed-up, training, profile, loader."""
    lines = [
        f"- device: {env['device']} ({env['device_type']}), torch {env['torch']}"
        + (f", CUDA {env['cuda']}" if env["device_type"] == "cuda" else "")
        + f", {env['threads']} threads",
        f"- precision: {env['precision']}; memory format: {env['memory_format']}; "
        f"torch.compile: {'yes' if env['compile'] else 'no'}",
        f"- input: {env['input']}; config overrides: {' '.join(env['overrides']) or '-'}",
    ]
    if {"inference", "training"} & set(env["sections"]):
        lines.append(passes_line(env))
    inferred = [r for r in results if "inference" in r]
    if inferred:
        lines += inference_tables(inferred)
    trained = [r for r in results if "training" in r]
    if trained:
        lines += training_table(trained)
    profiled = [r for r in results if "profile" in r]
    if profiled:
        lines += profile_table(env, profiled)
    if loader:
        lines += loader_table(loader)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    with user_errors():
        args = parse_args(argv)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        env = describe(args)
        print(f"benchmarking {', '.join(args.models)} on {env['device']}", flush=True)
        start = time.perf_counter()
        timed_sections = {"inference", "training"} & set(args.only)
        results = [benchmark_model(name, args) for name in args.models] if timed_sections else []
        loader = benchmark_loader(args) if "loader" in args.only else []
        env["wall_s"] = time.perf_counter() - start
        text = markdown(env, results, loader)
        print()
        print(text, end="")
        print(f"\n(wall time {env['wall_s']:.0f} s)")
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        report = {"environment": env, "results": results, "loader": loader}
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))
        return report


if __name__ == "__main__":
    main()
