"""Runs analysed from disk, what ``src/analyze.py`` and ``make ablation``'s comparisons run: a run
directory (with ``test_results.json`` and the checkpoint it tested, ``checkpoints/last.ckpt`` for
the final weights) or a checkpoint; its test detections beside the ground truth, taken apart
(:mod:`dssd.analysis.breakdown`), compared with a baseline (:mod:`dssd.analysis.comparison`) and
written (:mod:`dssd.analysis.writing`). The detections are the run's ``voc_results/`` files (from
``make ablation``) when it has them for the checkpoint analysed, else that checkpoint run again on
the test split (:class:`dssd.deployment.detector.Detector`, the same detections as its test to
float rounding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from dssd.analysis.breakdown import GroundTruth, RunAnalysis, RunDetections, analyse_run
from dssd.analysis.comparison import Comparison, compare
from dssd.analysis.writing import write_comparison, write_run_analysis
from dssd.data.datamodule import dataset_items
from dssd.deployment.detector import Detector, batches
from dssd.deployment.inference import choose_device, load_checkpoint, load_test_data
from dssd.errors import (
    UserError,
    check_settings,
    creatable_directory,
    is_number,
    number,
    whole,
    writable_directory,
)
from dssd.evaluation.matched_run import results_per_image
from dssd.results.runs import RESULTS_DIR, read_test_results
from dssd.results.wandb import log_files

log = logging.getLogger(__name__)

# what test_results.json records when a run tested the weights it ended with
FINAL_WEIGHTS = "final weights"
DETECTION_SOURCES = ("auto", RESULTS_DIR, "checkpoint")


@dataclass(frozen=True)
class Run:
    """A run to analyse: its directory, the checkpoint tested, what the test logged (empty for a
    checkpoint given alone) and its name in tables."""

    directory: Path
    checkpoint: Path
    test_results: dict[str, Any]
    name: str


def find_run(path: str | Path, option: str = "run") -> Run:
    """The run of a run directory or of a checkpoint file; a directory without its test results
    or without the checkpoint they name is a :class:`UserError` saying what is missing (of the
    setting ``option``; "" for a command-line argument of its own)."""
    path = Path(path)

    def given(value: Any) -> str:
        return f"{option}={value}" if option else str(value)

    if path.is_file() and path.suffix in (".json", ".md", ".csv", ".yaml"):  # a run's record
        raise UserError(
            f"{given(path)}: a file of the run, not a checkpoint; give the run directory "
            f"({given(path.parent)}) or a checkpoint file"
        )
    if path.is_file():
        directory = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        has_results = (directory / "test_results.json").is_file()
        results = read_test_results(directory) if has_results else {}
        if results and _tested_checkpoint(directory, results)[1].resolve() != path.resolve():
            results = {}  # the test results of other weights
        return Run(directory, path, results, results.get("run_name") or directory.name)
    if not path.is_dir():
        raise UserError(f"{given(path)}: no such run directory or checkpoint file")
    if not (path / "test_results.json").is_file():
        raise UserError(
            f"{given(path)}: the run directory has no test_results.json (a run of src/train.py "
            "writes it when its test ends); test it first, or give its checkpoint file instead"
        )
    results = read_test_results(path)
    tested, checkpoint = _tested_checkpoint(path, results)
    if not checkpoint.is_file():
        raise UserError(
            f"{given(path)}: the checkpoint its test used ({tested}) is missing: expected "
            f"{checkpoint}; give a checkpoint file instead ({given('<file>.ckpt')})"
        )
    return Run(path, checkpoint, results, results.get("run_name") or path.name)


def _tested_checkpoint(directory: Path, results: dict[str, Any]) -> tuple[str, Path]:
    """What the test ``results`` of ``directory`` say it tested, and that checkpoint's path: in
    the directory's own ``checkpoints/`` when it is there (the run may have been moved or
    copied since its test recorded the path)."""
    tested = results.get("tested_checkpoint") or FINAL_WEIGHTS
    if tested == FINAL_WEIGHTS:
        return tested, directory / "checkpoints" / "last.ckpt"
    recorded = Path(tested)
    own = directory / "checkpoints" / recorded.name
    moved = recorded.parent.name == "checkpoints" and own.is_file()
    return tested, own if moved else recorded


def config_of_test(run: Run) -> DictConfig:
    """The run config of ``run``'s checkpoint, with ``data`` as the run's test recorded it
    (``src/eval.py`` may test other data than the checkpoint was trained on)."""
    run_cfg = load_checkpoint(run.checkpoint)[1]
    if recorded := run.test_results.get("test_data"):
        run_cfg = run_cfg.copy()
        with open_dict(run_cfg):
            run_cfg.data = OmegaConf.create(recorded)
    return run_cfg


def load_test_split(run_cfg: DictConfig) -> GroundTruth:
    """The test split of a run config's ``data``; one without images is a :class:`UserError`."""
    datamodule = load_test_data(run_cfg)
    items = dataset_items(datamodule.datasets["test"])
    if not items:
        raise UserError(f"the test split of {run_cfg.data.get('root')} holds no images to analyse")
    return GroundTruth(
        image_ids=tuple(reader.ids[i] for reader, i in items),
        image_paths=tuple(str(reader.image_paths[i]) for reader, i in items),
        targets=tuple(_target(reader.objects(i)) for reader, i in items),
        class_names=tuple(datamodule.class_names),
        use_07_metric=datamodule.use_07_metric,
    )


def _target(annotation: dict[str, Any]) -> dict[str, np.ndarray]:
    boxes = np.asarray(annotation["boxes"], np.float64).reshape(-1, 4)
    difficult = annotation.get("difficult")
    return {
        "boxes": boxes,
        "labels": np.asarray(annotation["labels"], np.int64),
        "difficult": np.asarray(np.zeros(len(boxes)) if difficult is None else difficult, bool),
    }


def load_test_detections(
    run: Run,
    source: str = "auto",
    device: str = "cpu",
    batch_size: int | None = None,
    split: GroundTruth | None = None,
) -> RunDetections:
    """The run's test split (rebuilt from the data its test recorded unless given) and its
    detections: its ``voc_results/`` files (``source=voc_results``, or ``auto`` when they exist
    and are this checkpoint's) or its checkpoint run on the images (``source=checkpoint``, or
    ``auto`` otherwise)."""
    if split is None:
        split = load_test_split(config_of_test(run))
    results = run.directory / RESULTS_DIR
    if detection_source(run, source) == RESULTS_DIR:
        log.info("%s: test detections from %s", run.name, results)
        try:
            preds = results_per_image(results, split.image_ids, split.class_names)
        except (OSError, ValueError) as err:
            raise UserError(f"{results}: cannot read its test detections ({err})") from None
    else:
        preds = _predict(run, split.image_paths, device, batch_size)
    preds = tuple({k: np.asarray(v) for k, v in p.items() if k != "names"} for p in preds)
    return RunDetections(**vars(split), preds=preds)  # the split's fields, by name


def detection_source(run: Run, source: str = "auto") -> str:
    """Where ``run``'s test detections come from: ``voc_results`` (its result files, which hold
    the detections of the weights its test used) or ``checkpoint`` (the checkpoint run again);
    ``source`` asks for one or, ``auto``, the files when they are the checkpoint's."""
    results = run.directory / RESULTS_DIR
    # a checkpoint given alone (no test results) is other weights, or cannot be told apart
    own = results.is_dir() and bool(run.test_results)
    if source == "voc_results" and not own:
        raise UserError(
            f"detections=voc_results, but {run.directory} has no {RESULTS_DIR}/"
            if not results.is_dir()
            else f"detections=voc_results: {results} holds the detections of the weights "
            f"{run.directory}'s test used, not of {run.checkpoint}; use detections=checkpoint"
        )
    if source == "auto" and results.is_dir() and not own:
        log.info("%s: %s are other weights' detections; running the checkpoint", run.name, results)
    return RESULTS_DIR if source != "checkpoint" and own else "checkpoint"


def _predict(run: Run, paths: Sequence[str], device: str, batch_size: int | None) -> list[dict]:
    """The checkpoint's detections of the images at ``paths``, computed as its test computed
    them: in the run's precision, batch norms unfolded, in batches of the run's test batch size
    unless ``batch_size`` is given."""
    detector = Detector.from_checkpoint(run.checkpoint, choose_device(device), fold_bn=False)
    detector.batch_size = batch_size = batch_size or int(detector.run_config.data.batch_size)
    log.info("%s: running %s on %d test images", run.name, run.checkpoint, len(paths))
    found: list[dict] = []
    with tqdm(total=len(paths), unit="image", desc=f"detect ({run.name})") as progress:
        for batch in batches(list(paths), batch_size * 4):
            found += detector.predict(batch)
            progress.update(len(batch))
    return found


@dataclass(frozen=True)
class Options:
    """How runs are analysed (the keys of ``conf/analyze.yaml`` of the same names)."""

    detections: str = "auto"
    device: str = "auto"
    batch_size: int | None = None
    score_threshold: float = 0.3
    gallery_size: int = 16
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    wandb: bool | str = "auto"
    data_root: str | None = None

    def __post_init__(self) -> None:
        """Refuse a setting no analysis can use, naming it (not a numpy error halfway)."""
        check_settings(
            self,
            ("score_threshold", number(0, 1), "a score in [0, 1]"),
            ("gallery_size", whole(0), "a whole number >= 0"),
            ("confidence", lambda v: is_number(v) and 0 < v < 1, "a level in (0, 1)"),
            ("detections", lambda v: v in DETECTION_SOURCES, "auto, voc_results or checkpoint"),
            ("batch_size", lambda v: v is None or whole(1)(v), "null or >= 1"),
            ("wandb", lambda v: v in ("auto", True, False), "auto, true or false"),
        )
        choose_device(self.device)  # said now, not after the test data is read
        # each tail of the interval holds a draw at least
        least = math.ceil(2 / (1 - self.confidence) - 1e-9)
        check_settings(
            self,
            (
                "bootstrap_samples",
                whole(least),
                f"a whole number >= 2 / (1 - confidence) = {least}",
            ),
        )


class Analyser:
    """Analyses runs (:func:`write_analysis`) and keeps each run's result, so that a run compared
    with several others (``make ablation``) is analysed once."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._done: dict[tuple[Path, Path], tuple[RunDetections, RunAnalysis]] = {}
        self._splits: dict[str, GroundTruth] = {}  # the test splits, by data config

    def __call__(self, run: Run) -> tuple[RunDetections, RunAnalysis]:
        # two directories may hold one checkpoint's detections made another way (eval.py)
        key = (run.directory.resolve(), run.checkpoint.resolve())
        if key not in self._done:
            options = self.options
            run_cfg = config_of_test(run)
            if options.data_root is not None:  # the test data moved since
                with open_dict(run_cfg):
                    run_cfg.data.root = options.data_root
            data = OmegaConf.to_yaml(run_cfg.data)
            source = detection_source(run, options.detections)  # decided once, logged once
            if data not in self._splits:
                self._splits[data] = load_test_split(run_cfg)
            test = load_test_detections(
                run, source, options.device, options.batch_size, self._splits[data]
            )
            log.info("%s: analysing %d test images", run.name, len(test.image_ids))
            analysis = analyse_run(test, options.score_threshold)
            logged = run.test_results.get("metrics", {}).get("test/voc_map")
            if logged is not None and abs(logged - analysis.map) > 1e-3:
                limit = run_cfg.trainer.get("limit_test_batches")
                if limit is not None and (isinstance(limit, int) or limit < 1):  # int: batches
                    why = f"its test ran on part of the split, trainer.limit_test_batches={limit}"
                elif source == RESULTS_DIR:
                    why = f"its {RESULTS_DIR}/ files are not those its test wrote"
                else:
                    why = "on another device, or with other weights, the checkpoint detects "
                    why += "other boxes"
                log.warning(
                    "%s: the analysed detections score VOC mAP %.4f, its test logged %.4f (%s)",
                    run.name,
                    analysis.map,
                    logged,
                    why,
                )
            self._done[key] = (test, analysis)
        return self._done[key]


def check_pairs(runs: Sequence[Run], baselines: Sequence[Run]) -> None:
    """Refuse, before any detection, a baseline that is its run itself (every difference would be
    zero) or whose test data has other classes than its run's (nothing to pair)."""
    for run, baseline in zip(runs, baselines, strict=False):  # no baselines: no pairs
        pairs = ((run.directory, baseline.directory), (run.checkpoint, baseline.checkpoint))
        if all(a.resolve() == b.resolve() for a, b in pairs):
            raise UserError(
                f"run={run.directory} and baseline={baseline.directory} are the same run "
                f"({run.checkpoint}): compare two runs"
            )
        classes = [config_of_test(r).data.get("class_names") for r in (run, baseline)]
        if None not in classes and list(classes[0]) != list(classes[1]):
            raise UserError(
                f"run={run.directory} was tested on the classes {list(classes[0])}, "
                f"baseline={baseline.directory} on {list(classes[1])}: a comparison needs the "
                "same test data"
            )


def write_analysis(
    runs: Sequence[Run],
    baselines: Sequence[Run],
    out_dir: Path,
    analyser: Analyser,
    run_name: str | None = None,
    baseline_name: str | None = None,
) -> tuple[Path, Comparison | None]:
    """Analyse ``runs`` (seeds; the figures and tables of the run itself are the first one's)
    and, given ``baselines`` paired with them, compare; write everything into ``out_dir`` and
    return the summary's path and the comparison."""
    options = analyser.options
    run_dirs = ", ".join(str(r.directory) for r in runs)
    # nothing is made or written until every run and baseline is read and compared: a refused
    # one leaves no empty or partial out_dir (by default inside the run) behind
    creatable_directory(out_dir, "out_dir")
    check_pairs(runs, baselines)
    mine = [analyser(r) for r in runs]
    theirs = [analyser(r) for r in baselines]
    result = None
    if baselines:
        sides = [*zip(*mine, strict=True), *zip(*theirs, strict=True)]  # tests, then analyses
        try:
            result = compare(*sides, options.bootstrap_samples, options.confidence)
        except ValueError as err:
            against = ", ".join(str(r.directory) for r in baselines)
            raise UserError(f"{run_dirs} against {against}: {err}") from None
    writable_directory(out_dir, "out_dir")
    run_name = run_name or runs[0].name
    text, files = write_run_analysis(out_dir, *mine[0], run_name, options.gallery_size)
    sections = [text]
    if result is not None:
        baseline_name = baseline_name or baselines[0].name
        if baseline_name == run_name:
            baseline_name = f"{baseline_name} (baseline)"
        text, written = write_comparison(
            out_dir, mine[0][0], (mine[0][1], theirs[0][1]), result, run_name, baseline_name
        )
        sections.append(text)
        files += written
    header = [
        f"# Analysis of {run_name}",
        "",
        f"Run(s): {run_dirs}; checkpoint(s): {', '.join(str(r.checkpoint) for r in runs)}.",
    ]
    if len(runs) > 1:
        header.append(f"The figures and tables of the run itself are those of {runs[0].directory}.")
    summary = out_dir / "summary.md"
    summary.write_text("\n\n".join(["\n".join(header), *sections]) + "\n")
    files.insert(0, summary)
    log_to_wandb(options.wandb, runs[0], files, mine[0][1])
    log.info("Analysis written to %s: %s", out_dir, ", ".join(f.name for f in files))
    return summary, result


def log_to_wandb(when: bool | str, run: Run, files: Sequence[Path], analysis: RunAnalysis) -> None:
    """Log the analysis (headline figures, figures, tables) to a W&B run of the run's project, name
    and group: always (``when=True``) or if the run logged to W&B (``"auto"``)."""
    if when is False:
        return
    settings = (load_checkpoint(run.checkpoint)[1].get("logger") or {}).get("wandb")
    if when == "auto" and settings is None:
        return
    metrics = {"analysis/voc_map": analysis.map}
    metrics.update({f"analysis/ap_{b.name}": b.ap for b in analysis.coco_sizes})
    metrics.update({f"analysis/dap_{k}": v for k, v in analysis.errors.delta_map.items()})
    settings = OmegaConf.to_container(settings, resolve=True) if settings else {}
    import wandb.errors  # here: wandb loads only when an analysis is logged

    try:
        log_files(settings, run.name, files, metrics)
    except wandb.errors.Error as err:  # e.g. an online run's project, and no W&B login here
        log.warning("Did not log the analysis to W&B (%s); wandb=false leaves W&B out", err)
        return
    log.info("Logged the analysis to W&B under %s", files[0].parent / "wandb")
