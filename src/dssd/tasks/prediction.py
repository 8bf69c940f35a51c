"""Prediction: a checkpoint's detections on images (a file, folder or glob pattern) or videos,
drawn on copies of the inputs and written as one COCO results JSON."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from pytorch_lightning.loggers import Logger, WandbLogger
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from dssd.data.coco import detections_to_coco_results, write_coco_results
from dssd.data.voc import read_image
from dssd.deployment.detector import Detector, batches
from dssd.deployment.inference import choose_device
from dssd.errors import BOOLEAN, UserError, check_settings, number, whole, writable_directory
from dssd.results.wandb import wandb_image
from dssd.tasks.common import instantiate_group, log_run_config

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
# drawn images keep their name when it has one of these suffixes, and get ``.png`` added if not
DRAWN_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
# box colours, one per class (cycled)
PALETTE = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "purple", "white"]
# a label is written on its box's colour: in white on the dark ones, in black on the others
WHITE_TEXT = {"red", "blue", "purple"}


@dataclass
class Frame:
    """One image to detect on: a file, or frame ``index`` of a video playing at ``fps``."""

    name: str  # the file's path relative to the input's directory, unique per file
    image: np.ndarray  # HxWx3 uint8 RGB
    index: int | None = None
    fps: float | None = None


@dataclass
class Summary:
    """What a prediction run did, as written to ``summary.json``."""

    images: int = 0
    detections: int = 0
    drawn: int = 0  # of the detections, those scoring at least the draw threshold
    skipped: list[dict[str, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # input name -> drawn file

    def skip(self, name: str, reason: str) -> None:
        log.warning("skipping %s: %s", name, reason)
        self.skipped.append({"file": name, "reason": reason})


def input_files(spec: str) -> tuple[Path, list[Path]]:
    """The directory names are relative to, and the files of ``spec``: a file, a folder's files
    (not hidden), or a glob pattern's (``**`` recurses), sorted; none is a :class:`UserError`.
    Entries that are not folders count as files, so a broken link is reported as unreadable."""
    path = Path(spec)
    if path.is_dir():
        try:
            entries = list(path.iterdir())
        except OSError as err:
            raise UserError(f"input={spec}: cannot list the folder ({err.strerror})") from None
        files = sorted(p for p in entries if not p.is_dir() and not p.name.startswith("."))
        root = path
    elif path.is_file():
        files, root = [path], path.parent
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if not Path(p).is_dir())
        root = Path(os.path.commonpath([p.parent for p in files])) if files else path.parent
    else:
        raise UserError(f"input={spec}: no such file or directory")
    if not files:
        raise UserError(f"input={spec}: no files there")
    return root, files


def is_video(path: Path) -> bool:
    """Whether ``path`` is a video, by its suffix."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def frame_count(path: Path) -> int:
    """The number of frames a video's header announces (1 for an image), for the progress bar."""
    if not is_video(path):
        return 1
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return max(count, 0)


def read_video(path: Path, name: str) -> Iterator[Frame]:
    """The frames of a video, decoded one at a time, as RGB."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield Frame(name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index, fps)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise OSError("not a readable video")


def read_frames(
    files: Sequence[Path], root: Path, summary: Summary, progress: tqdm
) -> Iterator[Frame]:
    """The images and video frames of ``files``; an undecodable file is skipped."""
    for path in files:
        name = path.relative_to(root).as_posix()
        video = is_video(path)
        try:
            yield from read_video(path, name) if video else [Frame(name, read_image(path))]
        except OSError as err:
            summary.skip(name, "not a readable video" if video else f"not a readable image ({err})")
            progress.update(1)


def draw(image: np.ndarray, detections: dict[str, Any], threshold: float) -> np.ndarray:
    """``image`` with the detections scoring at least ``threshold`` drawn: box, class, score."""
    keep = (detections["scores"] >= threshold).nonzero().flatten().tolist()
    if not keep:
        return image
    scores, labels = detections["scores"].tolist(), detections["labels"].tolist()
    colors = [PALETTE[(labels[i] - 1) % len(PALETTE)] for i in keep]
    drawn = draw_bounding_boxes(
        torch.from_numpy(image).permute(2, 0, 1),
        detections["boxes"][keep],
        labels=[f"{detections['names'][i]} {scores[i]:.2f}" for i in keep],
        colors=colors,
        width=max(2, round(max(image.shape[:2]) / 500)),  # seen on a 6000 px photo scaled down
        fill_labels=True,  # readable on any image, also over a box of the same colour
        label_colors=["white" if c in WHITE_TEXT else "black" for c in colors],
    )
    return drawn.permute(1, 2, 0).numpy()


class Outputs:
    """Writes the drawn images and videos into ``directory``, keeping the inputs' names."""

    def __init__(self, directory: Path, summary: Summary) -> None:
        self.directory = directory
        self.summary = summary
        self.taken: set[str] = set()  # output names so far
        # the video being written, its writer None where OpenCV cannot write its frames
        self.video: tuple[str, cv2.VideoWriter | None] | None = None

    def path(self, name: str, video: bool) -> Path:
        """The output path of input ``name``, ``.mp4`` or ``.png`` added unless it ends so; a
        name an earlier input took gets ``-2``, ``-3``, ... (``scan.bmp`` takes ``scan.bmp.png``,
        so the input ``scan.bmp.png`` after it is written as ``scan.bmp-2.png``)"""
        suffixes, added = ({".mp4"}, ".mp4") if video else (DRAWN_SUFFIXES, ".png")
        out = name if Path(name).suffix.lower() in suffixes else f"{name}{added}"
        stem, suffix = os.path.splitext(out)
        copy = 2
        while out in self.taken:
            out, copy = f"{stem}-{copy}{suffix}", copy + 1
        self.taken.add(out)
        self.summary.outputs[name] = out
        path = self.directory / out
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, frame: Frame, drawn: np.ndarray) -> None:
        if frame.index is None:
            # JPEG quality 95: the drawn image close to its input
            Image.fromarray(drawn).save(self.path(frame.name, video=False), quality=95)
            return
        if self.video is None or self.video[0] != frame.name:
            self.close()
            path = self.path(frame.name, video=True)
            size = (drawn.shape[1], drawn.shape[0])  # width, height
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps, size)
            if not writer.isOpened():  # its detections are kept; only the drawn copy is not
                log.warning(
                    "cannot write the drawn video %s: OpenCV's MPEG-4 writer refuses %dx%d "
                    "frames (its detections are in detections.json)",
                    *(path, *size),
                )
                del self.summary.outputs[frame.name]
                writer = None
            self.video = (frame.name, writer)
        if self.video[1] is not None:
            self.video[1].write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.video is not None and self.video[1] is not None:
            self.video[1].release()
        self.video = None


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Detect objects in ``cfg.input`` with the checkpoint ``cfg.ckpt_path``; write into
    ``cfg.output_dir`` the drawn images and videos, ``detections.json`` (COCO results with
    ``file_name``, and ``frame`` for videos) and ``summary.json``, and return the summary."""
    check_settings(
        cfg,
        ("batch_size", whole(1), "a whole number >= 1"),
        ("score_threshold", lambda v: v is None or number(0, 1)(v), "null or a score in [0, 1]"),
        ("draw_threshold", number(), "a score (above 1: nothing drawn)"),
        ("max_logged_images", whole(0), "a whole number >= 0"),
        ("fold_bn", *BOOLEAN),
    )
    # a list was read as a glob pattern; a number (input=2024) is a name
    if OmegaConf.is_config(cfg.input) or cfg.input is None or cfg.input == "":
        raise UserError(
            f"input={cfg.input}: give one image, video, folder or glob pattern (several files: "
            "a folder, or a pattern such as 'input=images/*.jpg')"
        )
    root, files = input_files(str(cfg.input))
    output_dir = Path(cfg.output_dir)
    resolved = output_dir.resolve()
    inside = [f for f in files if resolved in f.resolve().parents]
    if inside:
        raise UserError(
            f"output_dir={output_dir} holds input files (e.g. {inside[0]}), which the drawn ones "
            "would overwrite: choose a folder outside the input's"
        )
    # loaded before output_dir is made, so that a wrong ckpt_path leaves no empty folder behind
    detector = Detector.from_checkpoint(
        cfg.ckpt_path, choose_device(cfg.device), cfg.fold_bn, cfg.batch_size, cfg.precision
    )
    writable_directory(output_dir, "output_dir")
    for name in ("detections.json", "summary.json"):  # written at the end, or when stopped
        if (output_dir / name).is_dir():
            raise UserError(
                f"output_dir={output_dir} holds a folder {name}, the name of a file this run "
                "writes: choose another output_dir, or move that folder"
            )
    if (output_dir / "summary.json").is_file():
        log.warning(
            "output_dir=%s holds an earlier prediction's outputs: files of the same names are "
            "replaced, the others stay beside this run's summary.json",
            output_dir,
        )
    score_threshold = cfg.score_threshold
    if score_threshold is None:
        score_threshold = detector.module.postprocess.score_threshold
    classes = dict(enumerate(detector.class_names, start=1))
    labels = {label: label for label in classes}  # category ids: the network's labels
    loggers = instantiate_group(cfg.get("logger"))
    if loggers:
        log_run_config(loggers, OmegaConf.to_container(cfg, resolve=True))
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    where = files[0] if len(files) == 1 else f"{len(files)} files of {root}"
    log.info("Detecting in %s with %s on %s", where, cfg.ckpt_path, detector.device)

    summary = Summary()
    outputs = Outputs(output_dir, summary)
    results: list[dict[str, Any]] = []
    table: list[list[Any]] = []
    progress = tqdm(total=sum(frame_count(p) for p in files), unit="image", desc="predict")
    try:
        for batch in batches(read_frames(files, root, summary, progress), cfg.batch_size):
            found = detector.predict([frame.image for frame in batch], score_threshold)
            for frame, detections in zip(batch, found, strict=True):
                summary.images += 1
                entries = detections_to_coco_results([detections], [summary.images], labels)
                where: dict[str, Any] = {"file_name": frame.name}
                if frame.index is not None:
                    where["frame"] = frame.index
                results += [entry | where for entry in entries]
                outputs.write(frame, draw(frame.image, detections, cfg.draw_threshold))
                summary.drawn += int((detections["scores"] >= cfg.draw_threshold).sum())
                if wandb_loggers and len(table) < cfg.max_logged_images:
                    image = wandb_image(
                        frame.image, detections, cfg.draw_threshold, detector.class_names
                    )
                    table.append([frame.name, frame.index, image, len(entries)])
            progress.update(len(batch))
    except BaseException:  # Ctrl-C or a failure: the images done so far keep their detections
        outputs.close()
        write_results(cfg, output_dir, summary, results, score_threshold, classes, complete=False)
        log.warning(
            "stopped after %d images: their detections are in %s (summary.json: complete false)",
            summary.images,
            output_dir / "detections.json",
        )
        raise
    finally:
        progress.close()
        outputs.close()
    record = write_results(cfg, output_dir, summary, results, score_threshold, classes, True)
    print_summary(summary, score_threshold, cfg.draw_threshold, output_dir)
    if not summary.images:  # (the W&B run, if any, then ends as failed)
        count = "its file" if len(files) == 1 else f"any of its {len(files)} files"
        raise UserError(f"input={cfg.input}: could not read {count} (see the skips above)")
    log_run(loggers, summary, table)
    return record


def write_results(
    cfg: DictConfig,
    output_dir: Path,
    summary: Summary,
    results: list[dict[str, Any]],
    score_threshold: float,
    classes: dict[int, str],
    complete: bool,
) -> dict[str, Any]:
    """``detections.json`` and ``summary.json`` (returned), ``complete`` false for a run stopped
    before its last input."""
    summary.detections = len(results)
    write_coco_results(output_dir / "detections.json", results)
    record = {
        "checkpoint": str(cfg.ckpt_path),
        "input": str(cfg.input),
        "complete": complete,
        "images": summary.images,
        "detections": summary.detections,
        "drawn_detections": summary.drawn,
        "score_threshold": score_threshold,
        "draw_threshold": cfg.draw_threshold,
        "categories": [{"id": k, "name": v} for k, v in classes.items()],
        "skipped": summary.skipped,
        "outputs": summary.outputs,
    }
    (output_dir / "summary.json").write_text(json.dumps(record, indent=2))
    return record


def log_run(loggers: list[Logger], summary: Summary, table: list[list]) -> None:
    """The run's counts to every logger, and the table of images with their boxes to W&B."""
    skipped = len(summary.skipped)
    counts = {"images": summary.images, "detections": summary.detections, "skipped": skipped}
    for logger in loggers:
        logger.log_metrics(counts)
        if isinstance(logger, WandbLogger):
            logger.log_table("predictions", ["file_name", "frame", "image", "detections"], table)
        logger.finalize("success")
    for logger in loggers:  # once every logger is finalised
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def print_summary(
    summary: Summary, score_threshold: float, draw_threshold: float, output_dir: Path
) -> None:
    """What was done and skipped, and where the outputs are."""
    print(
        f"Predicted {summary.images} images: {summary.detections} detections scoring above "
        f"{score_threshold:g} (in detections.json), {summary.drawn} of them drawn (scoring at "
        f"least {draw_threshold:g}); skipped {len(summary.skipped)} files"
    )
    for skip in summary.skipped:
        print(f"  skipped {skip['file']}: {skip['reason']}")
    print(
        f"Outputs in {output_dir}: {len(summary.outputs)} drawn files, detections.json, "
        "summary.json"
    )
