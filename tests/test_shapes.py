"""The embedded shapes dataset generator: determinism, VOC/COCO consistency, content, stamp."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from dssd.data.shapes import CLASSES, STAMP_FILE, generate_shapes, main, read_stamp
from dssd.data.voc import parse_voc_xml
from dssd.errors import UserError

CLASS_TO_INDEX = {name: i + 1 for i, name in enumerate(CLASSES)}
SPLITS = ("trainval", "test", "val")


def split_ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def annotation(root: Path, image_id: str) -> dict:
    return parse_voc_xml(root / "Annotations" / f"{image_id}.xml", CLASS_TO_INDEX)


def annotations(root: Path) -> dict[str, dict]:
    """Parsed VOC annotations of every image in every split, by id."""
    return {i: annotation(root, i) for split in SPLITS for i in split_ids(root, split)}


def max_pairwise_iou(boxes: np.ndarray) -> float:
    """Largest IoU between two different xyxy boxes."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = 0.0
    for i, j in itertools.combinations(range(len(boxes)), 2):
        iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
        ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
        inter = max(iw, 0.0) * max(ih, 0.0)
        best = max(best, inter / (area[i] + area[j] - inter))
    return best


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A moderately sized dataset, large enough to contain every kind of object."""
    return generate_shapes(
        tmp_path_factory.mktemp("sample"), num_trainval=80, num_test=20, num_val=20, seed=3
    )


def test_same_seed_same_files_different_seed_different(tmp_path: Path) -> None:
    kwargs = {"num_trainval": 6, "num_test": 3, "num_val": 3}
    a = generate_shapes(tmp_path / "a", seed=7, **kwargs)
    b = generate_shapes(tmp_path / "b", seed=7, **kwargs)
    c = generate_shapes(tmp_path / "c", seed=8, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 12 + 3 + 3 + 1  # jpg + xml per image, split lists, COCO, stamp
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    coco = Path("annotations/instances_trainval.json")
    assert (a / coco).read_bytes() != (c / coco).read_bytes()


def test_val_split_is_generated_last_and_leaves_trainval_and_test_alone(tmp_path: Path) -> None:
    kwargs = {"num_trainval": 5, "num_test": 3, "seed": 7}
    a = generate_shapes(tmp_path / "a", num_val=2, **kwargs)
    b = generate_shapes(tmp_path / "b", num_val=4, **kwargs)
    assert split_ids(a, "val") == ["000009", "000010"] and len(split_ids(b, "val")) == 4
    for split in ("trainval", "test"):
        assert split_ids(a, split) == split_ids(b, split)
        for image_id in split_ids(a, split):
            for rel in (f"JPEGImages/{image_id}.jpg", f"Annotations/{image_id}.xml"):
                assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_layout_and_image_sizes(sample: Path) -> None:
    trainval, test = split_ids(sample, "trainval"), split_ids(sample, "test")
    val = split_ids(sample, "val")
    assert len(trainval) == 80 and len(test) == 20 and len(val) == 20
    assert len(set(trainval) | set(test) | set(val)) == 120  # disjoint
    assert trainval[0] == "000001"
    images = sorted(p.stem for p in (sample / "JPEGImages").glob("*.jpg"))
    assert images == trainval + test + val
    for image_id, ann in list(annotations(sample).items())[:10]:
        image = cv2.imread(str(sample / "JPEGImages" / f"{image_id}.jpg"))
        assert image.shape == (ann["height"], ann["width"], 3)
        assert 256 <= ann["width"] <= 384 and 256 <= ann["height"] <= 384


def test_coco_json_matches_voc_xml(sample: Path) -> None:
    anns = annotations(sample)
    for split in SPLITS:
        coco = COCO(str(sample / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        ids = split_ids(sample, split)
        assert sorted(coco.getImgIds()) == [int(i) for i in ids]
        for image_id in ids:
            voc = anns[image_id]
            info = coco.loadImgs(int(image_id))[0]
            assert (info["width"], info["height"]) == (voc["width"], voc["height"])
            assert info["file_name"] == f"{image_id}.jpg"
            objs = coco.loadAnns(coco.getAnnIds(imgIds=int(image_id)))
            xywh = np.array([o["bbox"] for o in objs], np.float32).reshape(-1, 4)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            np.testing.assert_array_equal(xyxy, voc["boxes"])
            assert [o["category_id"] for o in objs] == voc["labels"].tolist()
            assert [bool(o["difficult"]) for o in objs] == voc["difficult"].tolist()
            # difficult objects are crowd regions for pycocotools, which then ignores them
            assert [bool(o["iscrowd"]) for o in objs] == voc["difficult"].tolist()
            assert all(o["area"] > 0 for o in objs)


def test_content_covers_classes_sizes_and_flags(sample: Path) -> None:
    anns = list(annotations(sample).values())
    labels = np.concatenate([a["labels"] for a in anns])
    boxes = np.concatenate([a["boxes"] for a in anns])
    sizes = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    counts = [len(a["labels"]) for a in anns]

    assert set(labels.tolist()) == set(CLASS_TO_INDEX.values())
    assert sizes.min() < 16 and sizes.max() > 100
    assert np.mean(sizes < 32) > 0.3  # many small objects
    assert any(a["difficult"].any() for a in anns)
    assert any(a["truncated"].any() for a in anns)
    assert max(counts) >= 10  # crowded images exist
    for split in SPLITS:  # every split has empty images
        assert any(len(annotation(sample, i)["labels"]) == 0 for i in split_ids(sample, split))


def test_boxes_are_valid_and_respect_overlap_limit(sample: Path) -> None:
    for ann in annotations(sample).values():
        boxes = ann["boxes"]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, 2] <= ann["width"]).all() and (boxes[:, 3] <= ann["height"]).all()
        # The generator limits the IoU of inclusive pixel boxes, which equals this one.
        assert max_pairwise_iou(boxes) <= 0.4 + 1e-6


def test_stamp_makes_generation_idempotent(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path, num_trainval=4, num_test=2, num_val=2, seed=1)
    stamp = json.loads((root / STAMP_FILE).read_text())
    assert stamp["num_trainval"] == 4 and "format_version" in stamp
    image = root / "JPEGImages" / "000001.jpg"
    mtime = image.stat().st_mtime_ns

    generate_shapes(tmp_path, num_trainval=4, num_test=2, num_val=2, seed=1)
    assert image.stat().st_mtime_ns == mtime

    generate_shapes(tmp_path, num_trainval=4, num_test=2, num_val=2, seed=1, overwrite=True)
    assert image.stat().st_mtime_ns != mtime

    # other settings: runs trained on the dataset would be tested on other images
    with pytest.raises(FileExistsError, match="num_trainval 4 .asked 3., num_test 2 .asked 1."):
        generate_shapes(tmp_path, num_trainval=3, num_test=1, num_val=1, seed=1)
    assert image.stat().st_mtime_ns != mtime and read_stamp(tmp_path)["num_trainval"] == 4
    generate_shapes(tmp_path, num_trainval=3, num_test=1, num_val=1, seed=1, overwrite=True)
    assert read_stamp(tmp_path)["num_trainval"] == 3
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 5  # 3 + 1 + 1


def test_refuses_to_overwrite_foreign_voc_data(tmp_path: Path) -> None:
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(FileExistsError, match="holds Annotations that the shapes generator did"):
        generate_shapes(tmp_path, num_trainval=2, num_test=1, num_val=1)
    assert (tmp_path / "Annotations").is_dir()
    (tmp_path / "a_file").write_text("")
    # a UserError: train.py data.root=<a file> prints it as one line
    with pytest.raises(UserError, match="a_file is a file, not a directory"):
        generate_shapes(tmp_path / "a_file", num_trainval=2, num_test=1, num_val=1)


def test_cli_reports_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--num-trainval", "3", "--num-test", "2", "--num-val", "1"]
    main(args)
    out = capsys.readouterr().out
    assert "generated" in out and "3 images" in out and "2 images" in out
    assert "val       1 image, " in out and "1 images" not in out
    main(args)
    assert "already up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--num-test", "-3"], "image counts cannot be negative"),
        (["--min-size", "500", "--max-size", "300"], "need 4 <= min_size <= max_size"),
        (["--min-size", "2", "--max-size", "2"], "need 4 <= min_size <= max_size (px), got 2"),
        (["--seed", "-1"], "the seed must be >= 0, got -1"),
    ],
)
def test_cli_refuses_impossible_settings_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    """Before anything on disk changes: a finished dataset at --out stays whole."""
    counts = ["--num-trainval", "2", "--num-test", "1", "--num-val", "1"]
    main(["--out", str(tmp_path / "out"), *counts])
    before = sorted(p.name for p in (tmp_path / "out" / "JPEGImages").iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), *counts, *args])
    assert exit_info.value.code == 2
    assert problem in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "JPEGImages").iterdir()) == before


@pytest.mark.slow
def test_worker_processes_do_not_change_the_output(tmp_path: Path) -> None:
    kwargs = {"num_trainval": 500, "num_test": 20, "num_val": 20}
    a = generate_shapes(tmp_path / "a", workers=1, **kwargs)
    b = generate_shapes(tmp_path / "b", workers=2, **kwargs)
    for path in sorted(a.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (b / path.relative_to(a)).read_bytes(), path


def test_building_the_data_where_none_is_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped ``data.root`` builds a new dataset there: the log says where, and only then."""
    from dssd.data import shapes

    built = []
    monkeypatch.setattr(shapes, "generate_shapes", lambda root, variant: built.append(root))
    with caplog.at_level("INFO", logger="dssd.data.shapes"):
        shapes.ensure_shapes(tmp_path / "typo")
        assert built == [tmp_path / "typo"]
        assert f"No complete shapes dataset in {tmp_path / 'typo'}: building" in caplog.text
        caplog.clear()
        stamp = {"format_version": shapes.FORMAT_VERSION, "variant": "plain"}
        (tmp_path / STAMP_FILE).write_text(json.dumps(stamp))
        shapes.ensure_shapes(tmp_path)
        assert built == [tmp_path / "typo"] and not caplog.text
