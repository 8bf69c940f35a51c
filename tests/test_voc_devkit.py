"""VOC mAP from the annotation files on disk to the score, against the devkit's own rules.

The project's side: ``VOCDataset`` reads the XML, ``read_voc_results`` / ``write_voc_results`` the
devkit's result files, ``VOCMeanAP`` scores. The reference side: ``tests/devkit.py``, a port of
``voc_eval.py`` that parses the same XML and reads the same result files itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_in_process
from devkit import evaluate_class, parse_rec, voc_eval_map
from dssd.data.voc import VOCDataset, read_voc_results, write_voc_results
from dssd.evaluation.metrics import VOCMeanAP
from test_reporting import coco_data
from test_voc import voc_object, voc_xml, write_voc

CLASSES = ("cat", "dog")
SHAPES = ["circle", "square", "triangle", "star", "cross", "ellipse"]
SIZE = "<width>96</width><height>64</height><depth>3</depth>"


def small_object_devkit(root: Path, seed: int) -> tuple[Path, dict[str, list]]:
    """A VOC test split of 30 images holding 6-20 px objects (some difficult), and devkit-style
    detections of them: near each object (shifted by 0-3 px, a pixel or two off in size, the
    right class or not), plus background boxes; 1-based inclusive indices, as the devkit's."""
    rng = np.random.default_rng(seed)
    annotations, detections = {}, {name: [] for name in CLASSES}
    for i in range(30):
        image_id = f"{i + 1:06d}"
        objects = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = (int(v) for v in rng.integers(6, 21, size=2))
            x0, y0 = int(rng.integers(1, 96 - w)), int(rng.integers(1, 64 - h))
            box = (x0, y0, x0 + w - 1, y0 + h - 1)
            name = CLASSES[int(rng.integers(2))]
            difficult = "<difficult>1</difficult>" if rng.random() < 0.15 else ""
            objects.append(voc_object(name, " ".join(map(str, box)), difficult))
            for _ in range(int(rng.integers(1, 4))):
                shift = rng.integers(-3, 4, size=4)
                found = name if rng.random() < 0.85 else CLASSES[1 - CLASSES.index(name)]
                moved = [b + int(s) for b, s in zip(box, shift, strict=True)]
                detections[found].append((image_id, moved))
        for _ in range(int(rng.integers(0, 3))):
            x0, y0 = int(rng.integers(1, 80)), int(rng.integers(1, 50))
            name = CLASSES[int(rng.integers(2))]
            detections[name].append((image_id, [x0, y0, x0 + 12, y0 + 10]))
        annotations[image_id] = voc_xml(*objects, size=SIZE)
    write_voc(root, annotations, split="test")
    scores = iter(rng.permutation(10000)[: sum(map(len, detections.values()))] / 10000 + 1e-5)
    results = root / "results"
    results.mkdir()
    for name, entries in detections.items():
        lines = [f"{i} {next(scores):.5f} {' '.join(map(str, box))}\n" for i, box in entries]
        (results / f"comp4_det_test_{name}.txt").write_text("".join(lines))
    return root, detections


def project_map(root: Path, results: Path) -> float:
    """The project's reader, result-file reader and metric."""
    dataset = VOCDataset(root, "test", CLASSES)
    found = read_voc_results(results, CLASSES)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    metric = VOCMeanAP(len(CLASSES))
    for image_id, ann in zip(dataset.ids, dataset.annotations, strict=True):
        det = found.get(image_id, empty)
        metric.update(
            [{k: torch.as_tensor(v) for k, v in det.items()}],
            [{k: torch.as_tensor(ann[k]) for k in ("boxes", "labels", "difficult")}],
        )
    return metric.compute()["map"].item()


@pytest.mark.parametrize("seed", range(4))
def test_reader_and_metric_equal_the_devkit_from_xml_files(tmp_path: Path, seed: int) -> None:
    root, _ = small_object_devkit(tmp_path / "VOC2007", seed)
    reference = voc_eval_map(root / "results", root, "test", list(CLASSES))
    assert project_map(root, root / "results") == pytest.approx(reference, abs=1e-6)

    # The case can tell the conventions apart: scoring the same files with the devkit's "+1"
    # on top of pixel-edge boxes (what the reader gives) raises the mAP well above the devkit's.
    dataset = VOCDataset(root, "test", CLASSES)
    recs = {
        image_id: [
            {"name": CLASSES[label - 1], "difficult": int(d), "bbox": list(box)}
            for box, label, d in zip(ann["boxes"], ann["labels"], ann["difficult"], strict=True)
        ]
        for image_id, ann in zip(dataset.ids, dataset.annotations, strict=True)
    }
    found = read_voc_results(root / "results", CLASSES)
    inflated = []
    for label, name in enumerate(CLASSES, start=1):
        dets = [
            (image_id, score, list(box))
            for image_id, d in found.items()
            for box, score, lab in zip(d["boxes"], d["scores"], d["labels"], strict=True)
            if lab == label
        ]
        inflated.append(evaluate_class(recs, dets, name)[0])
    assert np.nanmean(inflated) > reference + 0.03


def test_written_result_files_give_the_devkit_the_metrics_score(tmp_path: Path) -> None:
    root, _ = small_object_devkit(tmp_path / "VOC2007", 7)
    dataset = VOCDataset(root, "test", CLASSES)
    # detections in pixel edges with fractional coordinates, as the post-processor gives them
    g = torch.Generator().manual_seed(0)
    detections, targets = [], []
    for ann in dataset.annotations:
        boxes = torch.as_tensor(ann["boxes"])
        jitter = (torch.rand(len(boxes), 4, generator=g) - 0.5) * 8
        n = len(boxes)
        detections.append(
            {
                "boxes": (boxes + jitter).float(),
                "scores": torch.rand(n, generator=g),
                "labels": torch.as_tensor(ann["labels"]),
            }
        )
        targets.append({k: torch.as_tensor(ann[k]) for k in ("boxes", "labels", "difficult")})
    metric = VOCMeanAP(len(CLASSES))
    metric.update(detections, targets)
    expected = metric.compute()["map"].item()

    out = tmp_path / "written"
    paths = write_voc_results(out, dataset.ids, detections, CLASSES)
    assert sorted(p.name for p in paths) == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    first = (out / "comp4_det_test_cat.txt").read_text().splitlines()[0].split()
    assert len(first) == 6 and first[0] in dataset.ids
    assert voc_eval_map(out, root, "test", list(CLASSES)) == pytest.approx(expected, abs=1e-6)
    assert 0.2 < expected < 0.8  # a case with misses and false positives
    # and the project reads them back as they were
    back = read_voc_results(out, CLASSES)
    for image_id, det in zip(dataset.ids, detections, strict=True):
        if len(det["scores"]):
            order = np.lexsort((-back[image_id]["scores"], back[image_id]["labels"]))
            mine = np.lexsort((-det["scores"].numpy(), det["labels"].numpy()))
            np.testing.assert_allclose(
                back[image_id]["boxes"][order], det["boxes"].numpy()[mine], atol=1e-5
            )


def test_devkit_port_reads_the_xml_as_voc_eval_does(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(voc_xml(voc_object("dog", "3 4 10 20", "<difficult>1</difficult>")))
    assert parse_rec(path) == [{"name": "dog", "difficult": 1, "bbox": [3, 4, 10, 20]}]


def test_eval_writes_devkit_files_that_score_the_logged_map(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results" / "VOC2007" / "Main"
    run_in_process(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        f"voc_results={results}",
        f"hydra.run.dir={tmp_path}",
    )
    logged = json.loads((tmp_path / "test_results.json").read_text())["metrics"]["test/voc_map"]
    assert sorted(p.name for p in results.iterdir()) == sorted(
        f"comp4_det_test_{c}.txt" for c in SHAPES
    )
    assert voc_eval_map(results, tiny_shapes, "test", SHAPES) == pytest.approx(logged, abs=1e-6)


@pytest.mark.parametrize("script", ["train.py", pytest.param("eval.py", marks=pytest.mark.slow)])
def test_voc_results_directory_that_cannot_be_written_is_a_clear_error(
    script: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Before any training or testing (both entry points build the writers the same way), and
    before train.py builds the embedded data."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    data = tmp_path / "data"
    if script == "eval.py":
        args = [f"ckpt_path={request.getfixturevalue('tiny_checkpoint')}"]
    else:
        args = [f"data.root={data}"]
    proc = run_in_process(
        script,
        *args,
        f"voc_results={blocker / 'results'}",
        f"hydra.run.dir={tmp_path / script}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: voc_results={blocker / 'results'}: cannot write there" in proc.stderr
    assert not data.exists()


def test_voc_layout_and_coco_json_of_the_embedded_data_give_the_same_coco_figures(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The COCO JSON marks difficult objects as crowd regions, which COCO's evaluation ignores,
    as the VOC-layout path does: the same checkpoint scores the same through both."""
    figures = {}
    for name, data in (("voc", []), ("coco", coco_data(tiny_shapes))):
        run_in_process(
            "eval.py", f"ckpt_path={tiny_checkpoint}", *data, f"hydra.run.dir={tmp_path / name}"
        )
        metrics = json.loads((tmp_path / name / "test_results.json").read_text())["metrics"]
        figures[name] = {k: v for k, v in metrics.items() if k.startswith(("test/map", "test/mar"))}
    assert len(figures["coco"]) >= 10 and figures["coco"].keys() <= figures["voc"].keys()
    for key, value in figures["coco"].items():
        assert value == pytest.approx(figures["voc"][key], abs=1e-6), key
    # (the tiny checkpoint trains 2 steps, so these figures may all be 0; the crowd marks are
    # checked on hand-built data: read from COCO JSON in test_coco.py, written for the COCO
    # metric in test_module.py)


def pycocotools_ap(annotation_file: Path, results: list[dict]) -> float:
    """COCO AP (IoU 0.5:0.95, all areas) by pycocotools at SSD's 200-detection cap."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotation_file))
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.params.maxDets = [1, 10, 200]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 2]
    return float(precision[precision > -1].mean())


def test_pycocotools_on_the_coco_json_scores_like_the_voc_layout_path(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """Detections on every object, difficult ones included, and some misses: pycocotools on
    the embedded data's COCO JSON gives the AP that the project's COCO metric gives on the same
    test split read from the VOC layout, because the JSON marks difficult objects as crowd."""
    from dssd.data.coco import detections_to_coco_results
    from dssd.evaluation.module import coco_map_metric, pixel_targets

    dataset = VOCDataset(tiny_shapes, "test", SHAPES)
    assert sum(int(a["difficult"].sum()) for a in dataset.annotations) > 0
    g = torch.Generator().manual_seed(0)
    detections, targets = [], []
    for ann in dataset.annotations:
        boxes = torch.as_tensor(ann["boxes"])
        found = torch.rand(len(boxes), generator=g) < 0.8  # some objects are missed
        jitter = (torch.rand(len(boxes), 4, generator=g) - 0.5) * 6
        detections.append(
            {
                "boxes": (boxes + jitter)[found],
                "scores": torch.rand(len(boxes), generator=g)[found],
                "labels": torch.as_tensor(ann["labels"])[found],
            }
        )
        size = torch.tensor([ann["height"], ann["width"]])
        scale = torch.tensor([ann["width"], ann["height"]] * 2, dtype=torch.float32)
        targets.append(
            {
                "boxes": boxes / scale,  # as the loader gives them: normalised
                "labels": torch.as_tensor(ann["labels"]),
                "difficult": torch.as_tensor(ann["difficult"]),
                "orig_size": size,
            }
        )
    metric = coco_map_metric()
    metric.update(detections, pixel_targets(targets))
    ours = metric.compute()["map"].item()

    ids = [int(i) for i in dataset.ids]
    results = detections_to_coco_results(detections, ids, {c: c for c in range(1, 7)})
    json_file = tiny_shapes / "annotations" / "instances_test.json"
    assert pycocotools_ap(json_file, results) == pytest.approx(ours, abs=1e-6)

    # Without the crowd marks, pycocotools would count the difficult objects: another AP.
    data = json.loads(json_file.read_text())
    for annotation in data["annotations"]:
        annotation["iscrowd"] = 0
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(data))
    assert abs(pycocotools_ap(plain, results) - ours) > 0.01
