"""Measure the throughput of the training data pipeline with the full SSD augmentation.

Batches come from a real DataLoader (shuffled, ``collate_detection``, ``seed_worker``), as in
training, so the figures include reading and decoding the images. The first batch of each run is
not timed: it pays for starting the workers. The main process runs with one thread like each
worker (``seed_worker``), so the 0-worker row is one worker's worth of loading; this also keeps
OpenCV's thread pool unused before the workers are forked (a forked worker calling
``cv2.setNumThreads`` after the parent has used the pool can deadlock).

    python -m dssd.tools.benchmark_data --root data/shapes --sizes 321 513 --workers 0 1 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import cv2
import torch
from torch.utils.data import DataLoader

from dssd.data.augment import ssd_augmentation
from dssd.data.datamodule import collate_detection
from dssd.data.shapes import CLASSES
from dssd.data.transforms import build_transforms, seed_worker
from dssd.data.voc import VOCDataset
from dssd.tools.timing import loader_images_per_second


def images_per_second(
    dataset: VOCDataset, workers: int, batch_size: int, batches: int, seed: int
) -> float:
    """Training images per second over ``batches`` batches, after one warm-up batch."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate_detection,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader_images_per_second(loader, batches)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.benchmark_data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--root", required=True, help="VOC-layout dataset root")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--classes", help="comma-separated class names (default: the shapes set)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[321, 513])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    class_names = args.classes.split(",") if args.classes else list(CLASSES)
    print(f"{'size':>5} {'workers':>7} {'batch':>5} {'images/s':>9} {'images/s/worker':>15}")
    for size in args.sizes:
        transform = build_transforms(size, train=True, augment=ssd_augmentation())
        transform.reseed(args.seed)
        dataset = VOCDataset(args.root, args.split, class_names, transform)
        for workers in args.workers:
            rate = images_per_second(dataset, workers, args.batch_size, args.batches, args.seed)
            # With 0 workers the main process does the work: one worker's worth.
            per_worker = rate / max(workers, 1)
            print(f"{size:>5} {workers:>7} {args.batch_size:>5} {rate:>9.1f} {per_worker:>15.1f}")


if __name__ == "__main__":
    main()
