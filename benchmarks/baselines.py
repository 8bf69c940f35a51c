"""Time the project's hot paths against the baselines they replace, in the same run.

1. Matching + MultiBox loss: ``dssd.ops.MultiBoxLoss`` (one pass over the padded batch) vs
   torchvision's SSD loss path (``box_iou`` + ``SSDMatcher`` per image, then
   ``SSD.compute_loss``), on DSSD321's priors, the same targets and head outputs.
2. Post-processing: ``dssd.ops.PostProcessor`` (the candidates of a whole batch at once; NMS
   per image and class on a CPU, one ``batched_nms`` call on a GPU) vs torchvision's
   ``SSD.postprocess_detections`` (per image, per class), DSSD321 and DSSD513.
3. COCO mAP: ``faster_coco_eval`` vs ``pycocotools`` (their COCO / COCOeval classes directly)
   on synthetic images.
4. End-to-end inference: our ``ssd300_vgg`` network + ``PostProcessor`` vs torchvision's
   ``ssd300_vgg16`` (untrained: nothing is downloaded), transform and post-processing included.

The loss, post-processing and COCO comparisons also check that both sides compute the same
thing (losses, positives, detections, AP); the end-to-end one only times. Ratios are baseline /
ours: > 1 means ours is faster.

    python -m benchmarks.baselines            # defaults: ~6-9 min on 2 busy CPU cores
    python -m benchmarks.baselines --quick    # small sizes, under a minute
    python -m benchmarks.baselines --out table.md --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_convert, box_iou

from benchmarks.common import build_net, environment, median, random_targets, time_in_turn
from dssd.errors import user_errors
from dssd.ops import (
    MultiBoxLoss,
    PostProcessor,
    Tolerance,
    compare_detections,
    match,
    pad_targets,
)
from dssd.tools import HelpFormatter, at_least, check_outputs

NUM_CLASSES = 21  # VOC: 20 classes + background
LOSS_TARGET = 5.0
POSTPROCESS_TARGET = 5.0
FOLD_TARGET = 1.2


@dataclass
class Row:
    """One comparison of the results table."""

    what: str
    ours_ms: float
    baseline_ms: float
    target: float | None = None
    check: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.baseline_ms / self.ours_ms

    @property
    def met(self) -> str:
        if self.target is None:
            return "-"
        return "yes" if self.ratio >= self.target else "no"


def time_pair(fns: Sequence[Callable[[], object]], iters: int) -> list[float]:
    """Median milliseconds of each function, called in turn (order alternating) ``iters`` times
    after one untimed call."""
    return [1e3 * median(t) for (t,) in time_in_turn([[f] for f in fns], iters)]


# --------------------------------------------------------------------------------------------
# shared inputs


def model_priors(model: str) -> Tensor:
    """``net.priors`` ``[P, 4]`` (cxcywh, normalised) of ``conf/model/<model>.yaml`` on VOC."""
    return build_net(model, None, ["data=voc0712"]).priors.detach().clone()


def priors_to_anchors(priors: Tensor, image_size: int) -> Tensor:
    """Our normalised cxcywh priors as torchvision's xyxy anchors in pixels."""
    return box_convert(priors, "cxcywh", "xyxy") * image_size


def torchvision_ssd(image_size: int, num_classes: int = NUM_CLASSES) -> SSD:
    """A torchvision ``SSD`` used only as the holder of ``compute_loss``/``postprocess_detections``.

    Its backbone, head and anchor generator are never run (anchors are passed in). Thresholds
    are the project's: score 0.01, top-k 400, NMS 0.45, 200 detections, IoU 0.5, 3:1 negatives.
    """
    return SSD(
        backbone=nn.Identity(),
        anchor_generator=DefaultBoxGenerator([[2]]),
        size=(image_size, image_size),
        num_classes=num_classes,
        head=nn.Identity(),
        score_thresh=0.01,
        nms_thresh=0.45,
        detections_per_img=200,
        iou_thresh=0.5,
        topk_candidates=400,
        positive_fraction=0.25,
    )


# --------------------------------------------------------------------------------------------
# 1. matching + loss


def torchvision_match(
    ssd: SSD, targets_px: list[dict[str, Tensor]], anchors: list[Tensor]
) -> list[Tensor]:
    """``matched_idxs`` as ``SSD.forward`` computes them: box_iou + SSDMatcher per image."""
    return [
        ssd.proposal_matcher(box_iou(t["boxes"], a))
        for t, a in zip(targets_px, anchors, strict=True)
    ]


def torchvision_loss(
    ssd: SSD, targets_px: list[dict[str, Tensor]], loc: Tensor, conf: Tensor, anchors: list[Tensor]
) -> dict[str, Tensor]:
    """torchvision's SSD loss path: per-image matching, then ``SSD.compute_loss``."""
    matched_idxs = torchvision_match(ssd, targets_px, anchors)
    head_outputs = {"bbox_regression": loc, "cls_logits": conf}
    return ssd.compute_loss(targets_px, head_outputs, anchors, matched_idxs)


@dataclass
class LossInputs:
    priors: Tensor
    targets: list[dict[str, Tensor]]
    targets_px: list[dict[str, Tensor]]
    anchors: list[Tensor]
    loc: Tensor
    conf: Tensor
    ssd: SSD


def loss_inputs(priors: Tensor, image_size: int, batch_size: int, seed: int = 0) -> LossInputs:
    targets = random_targets(batch_size, NUM_CLASSES - 1, seed=seed)
    targets_px = [{"boxes": t["boxes"] * image_size, "labels": t["labels"]} for t in targets]
    anchors = [priors_to_anchors(priors, image_size)] * batch_size
    g = torch.Generator().manual_seed(seed + 1)
    loc = torch.randn(batch_size, len(priors), 4, generator=g)
    conf = torch.randn(batch_size, len(priors), NUM_CLASSES, generator=g)
    return LossInputs(priors, targets, targets_px, anchors, loc, conf, torchvision_ssd(image_size))


def compare_losses(x: LossInputs) -> dict[str, float]:
    """Both losses and both positive counts on the same inputs."""
    ours = MultiBoxLoss()(x.loc, x.conf, x.priors, x.targets)
    theirs = torchvision_loss(x.ssd, x.targets_px, x.loc, x.conf, x.anchors)
    matched = torchvision_match(x.ssd, x.targets_px, x.anchors)
    gt_boxes, gt_labels = pad_targets(x.targets)
    _, labels = match(x.priors, gt_boxes, gt_labels)
    tv_labels = torch.stack(
        [
            torch.where(m >= 0, t["labels"][m.clamp(min=0)], 0)
            for t, m in zip(x.targets, matched, strict=True)
        ]
    )
    return {
        "ours_loss": float(ours["loss"]),
        "ours_loc": float(ours["loss_loc"]),
        "ours_conf": float(ours["loss_conf"]),
        "tv_loss": float(theirs["bbox_regression"] + theirs["classification"]),
        "tv_loc": float(theirs["bbox_regression"]),
        "tv_conf": float(theirs["classification"]),
        "ours_pos": int((labels > 0).sum()),
        "tv_pos": int(sum(int((m >= 0).sum()) for m in matched)),
        "labels_agree": float((labels == tv_labels).float().mean()),
    }


def bench_loss(priors: Tensor, image_size: int, batch_size: int, iters: int) -> list[Row]:
    x = loss_inputs(priors, image_size, batch_size)
    check = compare_losses(x)
    check_text = (
        f"loss ours {check['ours_loss']:.4f} (loc {check['ours_loc']:.4f} + conf "
        f"{check['ours_conf']:.4f}), torchvision {check['tv_loss']:.4f} (loc {check['tv_loc']:.4f}"
        f" + conf {check['tv_conf']:.4f}); positives {check['ours_pos']} vs {check['tv_pos']}, "
        f"prior labels agree on {100 * check['labels_agree']:.3f}%"
    )
    criterion = MultiBoxLoss()
    rows = []
    with torch.no_grad():
        ours_ms, tv_ms = time_pair(
            [
                lambda: criterion(x.loc, x.conf, x.priors, x.targets),
                lambda: torchvision_loss(x.ssd, x.targets_px, x.loc, x.conf, x.anchors),
            ],
            iters,
        )
    rows.append(
        Row(
            f"match + loss, forward (B={batch_size}, P={len(priors)})",
            ours_ms,
            tv_ms,
            LOSS_TARGET,
            check_text,
            check,
        )
    )

    loc, conf = x.loc.clone().requires_grad_(), x.conf.clone().requires_grad_()

    def ours_step() -> None:
        criterion(loc, conf, x.priors, x.targets)["loss"].backward()
        loc.grad = conf.grad = None

    def tv_step() -> None:
        losses = torchvision_loss(x.ssd, x.targets_px, loc, conf, x.anchors)
        (losses["bbox_regression"] + losses["classification"]).backward()
        loc.grad = conf.grad = None

    ours_ms, tv_ms = time_pair([ours_step, tv_step], iters)
    rows.append(
        Row(
            f"match + loss, forward+backward (B={batch_size}, P={len(priors)})",
            ours_ms,
            tv_ms,
            LOSS_TARGET,
            "same inputs as above",
        )
    )
    return rows


# --------------------------------------------------------------------------------------------
# 2. post-processing


def realistic_logits(
    batch_size: int,
    num_priors: int,
    num_classes: int = NUM_CLASSES,
    background: float = 8.0,
    object_fraction: float = 0.02,
    seed: int = 0,
) -> Tensor:
    """Class logits of a trained-looking detector.

    Every logit ~ N(0, 1), plus ``background`` (N(8, 1) overall) on the background logit of
    every prior, so that most priors are confidently background; a random ``object_fraction``
    of the priors instead get N(8, 1) on one random foreground class (an object-like prior).
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch_size, num_priors, num_classes, generator=g)
    logits[..., 0] += background
    objects = torch.rand(batch_size, num_priors, generator=g) < object_fraction
    cls = torch.randint(1, num_classes, (batch_size, num_priors), generator=g)
    bump = torch.zeros_like(logits).scatter_(2, cls[..., None], background)
    logits += bump * objects[..., None]
    logits[..., 0] -= background * objects
    return logits


def untrained_logits(batch_size: int, num_priors: int, seed: int = 0) -> Tensor:
    """Worst case: N(0, 1) logits, every class of every prior scores about 1/21 > 0.01."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, num_priors, NUM_CLASSES, generator=g)


def passing_per_image(conf: Tensor, threshold: float = 0.01) -> float:
    """Mean number of (prior, foreground class) scores above ``threshold`` per image."""
    return float((conf.softmax(-1)[..., 1:] > threshold).sum() / conf.shape[0])


@dataclass
class PostInputs:
    loc: Tensor
    conf: Tensor
    priors: Tensor
    anchors: list[Tensor]
    sizes: Tensor
    shapes: list[tuple[int, int]]
    ssd: SSD


def post_inputs(priors: Tensor, image_size: int, conf: Tensor, seed: int = 0) -> PostInputs:
    batch_size = conf.shape[0]
    g = torch.Generator().manual_seed(seed + 2)
    loc = 0.5 * torch.randn(batch_size, len(priors), 4, generator=g)
    anchors = [priors_to_anchors(priors, image_size)] * batch_size
    sizes = torch.tensor([[image_size, image_size]] * batch_size)
    shapes = [(image_size, image_size)] * batch_size
    return PostInputs(loc, conf, priors, anchors, sizes, shapes, torchvision_ssd(image_size))


def run_ours_post(x: PostInputs) -> list[dict[str, Tensor]]:
    return PostProcessor()(x.loc, x.conf, x.priors, x.sizes)


def run_tv_post(x: PostInputs) -> list[dict[str, Tensor]]:
    with torch.no_grad():
        head = {"bbox_regression": x.loc, "cls_logits": x.conf}
        return x.ssd.postprocess_detections(head, x.anchors, x.shapes)


def agreement(x: PostInputs) -> dict[str, float]:
    """How torchvision's detections agree with ours, as sets (dssd.ops.compare_detections:
    same class, IoU >= 0.99, scores within 1e-4; an unmatched one only where a near-tie at a
    post-processing decision explains it), and how many scores pass the threshold."""
    post = PostProcessor()
    ours = post(x.loc, x.conf, x.priors, x.sizes)
    theirs = run_tv_post(x)
    candidates = post.candidates(x.loc, x.conf, x.priors, x.sizes)
    found = compare_detections(ours, theirs, Tolerance(box_px=0.01, score=1e-4), post, candidates)
    return {
        "ours": sum(len(d["scores"]) for d in ours),
        "baseline": sum(len(d["scores"]) for d in theirs),
        "matched": found.matched,
        "tied": found.tied,
        "unmatched": len(found.missing) + len(found.extra),
        "box_gap": found.box_gap,
        "agrees": found.agrees,
        "passing_per_image": passing_per_image(x.conf),
    }


def bench_postprocess(
    name: str,
    priors: Tensor,
    image_size: int,
    batch_sizes: Sequence[int],
    iters: int,
    worst_case: bool,
) -> list[Row]:
    rows = []
    cases = [("realistic", realistic_logits)]
    if worst_case:
        cases.append(("untrained", lambda b, p: untrained_logits(b, p)))
    for case, make in cases:
        for batch_size in batch_sizes:
            x = post_inputs(priors, image_size, make(batch_size, len(priors)))
            agree = agreement(x)
            ours_ms, tv_ms = time_pair(
                [lambda x=x: run_ours_post(x), lambda x=x: run_tv_post(x)], iters
            )
            rows.append(
                Row(
                    f"post-process {name} {case} (B={batch_size}, P={len(priors)})",
                    ours_ms,
                    tv_ms,
                    POSTPROCESS_TARGET,
                    f"{agree['passing_per_image']:.0f} scores > 0.01 per image; detections "
                    f"{agree['ours']} vs {agree['baseline']}: {agree['matched']} matched "
                    f"(largest box gap {agree['box_gap']:.1e} px), {agree['tied']} unmatched "
                    f"at near-ties, {agree['unmatched']} unmatched",
                    agree,
                )
            )
    return rows


# --------------------------------------------------------------------------------------------
# 3. COCO evaluation


def synthetic_coco(
    num_images: int, seed: int = 0, gt_per_image: float = 7.0, dets_per_image: int = 100
) -> tuple[dict, list[dict]]:
    """Random COCO ground truth (80 categories) and detections.

    About ``gt_per_image`` boxes per 640x480 image (Poisson); ``dets_per_image`` detections per
    image: 1-3 jittered copies of each ground truth (right class 80% of the time, high scores)
    and random boxes of random classes with low scores for the rest.
    """
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    images, annotations, detections = [], [], []

    def random_boxes(n: int) -> np.ndarray:
        w = np.exp(rng.uniform(np.log(8), np.log(400), n))
        h = np.clip(w * np.exp(rng.normal(0, 0.5, n)), 4, height - 1)
        w = np.minimum(w, width - 1)
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        return np.stack([x, y, w, h], axis=1)

    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"}
        )
        n = max(1, rng.poisson(gt_per_image))
        boxes = random_boxes(n)
        cats = rng.integers(1, 81, n)
        for box, cat in zip(boxes, cats, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
        dets = []
        for box, cat in zip(boxes, cats, strict=True):
            for _ in range(rng.integers(1, 4)):
                jitter = box + rng.normal(0, 0.1, 4) * np.r_[box[2:], box[2:]]
                jitter[2:] = np.maximum(jitter[2:], 1)
                label = int(cat) if rng.random() < 0.8 else int(rng.integers(1, 81))
                dets.append((jitter, label, rng.uniform(0.3, 1.0)))
        for box in random_boxes(max(0, dets_per_image - len(dets))):
            dets.append((box, int(rng.integers(1, 81)), rng.uniform(0.0, 0.6)))
        for box, label, score in dets[:dets_per_image]:
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [round(float(v), 2) for v in box],
                    "score": round(float(score), 4),
                }
            )
    categories = [{"id": i, "name": f"class{i}", "supercategory": "none"} for i in range(1, 81)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def coco_eval_pycocotools(gt: dict, dets: list[dict]) -> tuple[np.ndarray, float]:
    """``(stats, seconds of evaluate+accumulate+summarize)`` with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        start = time.perf_counter()
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        seconds = time.perf_counter() - start
    return np.asarray(evaluator.stats), seconds


def coco_eval_faster(gt: dict, dets: list[dict]) -> tuple[np.ndarray, float]:
    """``(stats, seconds of evaluate+accumulate+summarize)`` with faster_coco_eval."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(json.loads(json.dumps(gt)))
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a: None)
        start = time.perf_counter()
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        seconds = time.perf_counter() - start
    return np.asarray(evaluator.stats[:12]), seconds


def bench_coco(num_images: int) -> list[Row]:
    gt, dets = synthetic_coco(num_images)
    stats_pc, seconds_pc = coco_eval_pycocotools(gt, dets)
    stats_fc, seconds_fc = coco_eval_faster(gt, dets)
    diff = float(np.abs(stats_pc - stats_fc).max())
    return [
        Row(
            f"COCO eval {num_images} images ({len(gt['annotations'])} GT, {len(dets)} dets)",
            seconds_fc * 1e3,
            seconds_pc * 1e3,
            None,
            f"AP {stats_fc[0]:.4f} vs {stats_pc[0]:.4f}, AP50 {stats_fc[1]:.4f} vs "
            f"{stats_pc[1]:.4f}; max |stats diff| {diff:.1e} (ours = faster_coco_eval)",
            {
                "ap_faster": float(stats_fc[0]),
                "ap_pycocotools": float(stats_pc[0]),
                "max_diff": diff,
            },
        )
    ]


# --------------------------------------------------------------------------------------------
# 4. end-to-end inference


def bench_end_to_end(batch_sizes: Sequence[int], iters: int) -> list[Row]:
    from torchvision.models.detection import ssd300_vgg16

    ours_net = build_net("ssd300_vgg", None, ["data=voc0712"]).eval()
    post = PostProcessor()
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    rows = []
    for batch_size in batch_sizes:
        images = torch.rand(batch_size, 3, 300, 300)
        sizes = torch.tensor([[300, 300]] * batch_size)

        @torch.inference_mode()
        def ours(images: Tensor = images, sizes: Tensor = sizes) -> object:
            loc, conf = ours_net(images)
            return post(loc, conf, ours_net.priors, sizes)

        @torch.inference_mode()
        def theirs(images: Tensor = images) -> object:
            return tv(list(images))

        ours_ms, tv_ms = time_pair([ours, theirs], iters)
        rows.append(
            Row(
                f"end-to-end SSD300 VGG16 inference (B={batch_size})",
                ours_ms,
                tv_ms,
                None,
                f"images/s ours {1e3 * batch_size / ours_ms:.2f}, torchvision "
                f"{1e3 * batch_size / tv_ms:.2f} (untrained heads; {len(ours_net.priors)} vs "
                "8732 priors)",
            )
        )
    return rows


# --------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| what | ours ms | baseline ms | ratio (baseline/ours) | target | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        target = f">= {r.target:g}x" if r.target is not None else "-"
        lines.append(
            f"| {r.what} | {r.ours_ms:.1f} | {r.baseline_ms:.1f} | {r.ratio:.2f}x | {target} | "
            f"{r.met} |"
        )
    lines.append(
        f"| BN folding (measured by `make bench`'s fold table) | - | - | - | >= {FOLD_TARGET:g}x "
        "| in `python -m benchmarks.speed`'s table |"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and iterations")
    parser.add_argument(
        "--iters", type=at_least(1), help="timed calls per side (default 5, quick 2)"
    )
    parser.add_argument("--batch-size", type=at_least(1), help="loss batch (default 32, quick 4)")
    parser.add_argument(
        "--coco-images", type=at_least(1), help="COCO images (default 5000, quick 200)"
    )
    parser.add_argument("--threads", type=at_least(1), help="CPU threads (default: torch's)")
    parser.add_argument(
        "--only", nargs="+", choices=["loss", "postprocess", "coco", "e2e"], help="a subset"
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    check_outputs(parser, {"--out": args.out, "--json": args.json})
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    with user_errors():
        args = parse_args(argv)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        quick = args.quick
        iters = args.iters or (2 if quick else 5)
        batch_size = args.batch_size or (4 if quick else 32)
        coco_images = args.coco_images or (200 if quick else 5000)
        only = set(args.only or ["loss", "postprocess", "coco", "e2e"])
        env = environment(torch.device("cpu"))
        print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)

        rows: list[Row] = []

        def report(new: list[Row]) -> None:
            for r in new:
                print(
                    f"{r.what}: ours {r.ours_ms:.1f} ms, baseline {r.baseline_ms:.1f} ms, ratio "
                    f"{r.ratio:.2f}x, target {r.target or '-'}, met {r.met}\n    check: {r.check}",
                    flush=True,
                )
            rows.extend(new)

        priors321 = model_priors("dssd321") if only & {"loss", "postprocess"} else None
        if "loss" in only:
            report(bench_loss(priors321, 321, batch_size, iters))
        if "postprocess" in only:
            post_batches = [1, 8] if not quick else [2]
            report(
                bench_postprocess("DSSD321", priors321, 321, post_batches, iters, worst_case=True)
            )
            priors513 = model_priors("dssd513")
            report(
                bench_postprocess(
                    "DSSD513", priors513, 513, post_batches, iters, worst_case=not quick
                )
            )
        if "coco" in only:
            report(bench_coco(coco_images))
        if "e2e" in only:
            report(bench_end_to_end([1] if quick else [1, 8], max(1, iters // 2)))

        table = format_table(rows)
        print()
        print(table)
        if args.out:
            args.out.write_text(
                "Environment: "
                + ", ".join(f"{k} {v}" for k, v in env.items())
                + "\n\n"
                + table
                + "\n"
            )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "environment": env,
                        "rows": [asdict(r) | {"ratio": r.ratio, "met": r.met} for r in rows],
                    },
                    indent=2,
                )
            )
        return rows


if __name__ == "__main__":
    main()
