"""The embedded data's context variant: a small ring's own pixels and surroundings do not tell
its class, the large shape it lies in does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import run_in_process, tiny_overrides
from dssd.data import shapes
from dssd.data.shapes import CLASSES, CONTEXT_DISTANCE, CONTEXT_RING_CLASSES, generate_shapes
from dssd.errors import UserError
from dssd.tools import context_reach

RING = 31  # no ring's box is wider; every region's is far wider


@pytest.fixture(scope="module")
def context_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(
        tmp_path_factory.mktemp("context"),
        num_trainval=80,
        num_test=4,
        num_val=4,
        variant="context",
    )


def objects(root: Path) -> list[tuple[np.ndarray, list[dict], list[dict]]]:
    """Per trainval image: the RGB pixels, its rings and its regions (COCO annotations)."""
    coco = json.loads((root / "annotations" / "instances_trainval.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = []
    for info in coco["images"]:
        pixels = cv2.imread(str(root / "JPEGImages" / info["file_name"]))[..., ::-1]
        anns = by_image.get(info["id"], [])
        rings = [a for a in anns if max(a["bbox"][2:]) <= RING]
        regions = [a for a in anns if max(a["bbox"][2:]) > RING]
        images.append((pixels.astype(np.float32), rings, regions))
    return images


def window(pixels: np.ndarray, bbox: list[float], margin: int) -> np.ndarray:
    x, y, w, h = (int(v) for v in bbox)
    return pixels[max(y - margin, 0) : y + h + margin, max(x - margin, 0) : x + w + margin]


def near_box(pixels: np.ndarray, bbox: list[float], margin: int) -> np.ndarray:
    """Which pixels of ``window(pixels, bbox, margin)`` lie within ``margin`` of the box."""
    x, y, w, h = (int(v) for v in bbox)
    rows, cols = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    dx = np.maximum(np.maximum(x - cols, cols - (x + w - 1)), 0)
    dy = np.maximum(np.maximum(y - rows, rows - (y + h - 1)), 0)
    return window(((dx**2 + dy**2) <= margin**2)[..., None], bbox, margin)[..., 0]


def fill_mask(crop: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Which pixels of ``crop`` have the region's ``fill`` colour (blind to the colours
    themselves, which are random)."""
    return np.linalg.norm(cv2.blur(crop, (3, 3)) - fill, axis=2) < 60


def outline(crop: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A region's descriptor: the share of its box in its fill colour, and the box's aspect
    ratio (shorter over longer side)."""
    return np.array([fill_mask(crop, fill).mean(), min(crop.shape[:2]) / max(crop.shape[:2])])


def silhouette(crop: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A ring's descriptor: its crop's fill mask resized to 12 x 12, so that the descriptor sees
    the ring's shape (and thickness) whatever its size, and the crop's mean colour."""
    mask = fill_mask(crop, fill).astype(np.float32)
    shape = cv2.resize(mask, (12, 12), interpolation=cv2.INTER_AREA).ravel()
    return np.concatenate([shape, crop.mean((0, 1)) / 255])


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of the nearest class mean."""
    hits = 0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        classes = np.unique(labels[keep])
        means = np.stack([features[keep][labels[keep] == c].mean(0) for c in classes])
        hits += classes[np.argmin(((means - features[i]) ** 2).sum(1))] == labels[i]
    return hits / len(labels)


def test_every_ring_lies_in_a_region_of_its_class(context_data: Path) -> None:
    images = objects(context_data)
    rings = [(r, regions) for _, rs, regions in images for r in rs]
    assert len(rings) > 60
    ring_classes = {CLASSES[r["category_id"] - 1] for r, _ in rings}
    assert ring_classes == set(CONTEXT_RING_CLASSES)
    for ring, regions in rings:
        x, y, w, h = ring["bbox"]
        around = [
            g["category_id"]
            for g in regions
            if g["bbox"][0] <= x and g["bbox"][1] <= y
            and x + w <= g["bbox"][0] + g["bbox"][2] and y + h <= g["bbox"][1] + g["bbox"][3]
        ]  # fmt: skip
        assert ring["category_id"] in around


def test_nothing_near_a_ring_but_flat_fill_and_rings(context_data: Path) -> None:
    """Within CONTEXT_DISTANCE of a ring's box, every pixel that is not the region's fill colour
    belongs to a ring: the region's outline, which tells the class, is farther away."""
    margin = CONTEXT_DISTANCE - 2  # (JPEG blurs the last pixels)
    for pixels, rings, _ in objects(context_data):
        painted = np.zeros(pixels.shape[:2], bool)
        for ring in rings:
            x, y, w, h = (int(v) for v in ring["bbox"])
            painted[y - 3 : y + h + 3, x - 3 : x + w + 3] = True  # (and the blur's reach)
        for ring in rings:
            crop = cv2.blur(window(pixels, ring["bbox"], margin), (5, 5))  # (pixel noise)
            fill = np.median(crop.reshape(-1, 3), axis=0)
            off = np.linalg.norm(crop - fill, axis=2) > 60
            rings_near = window(painted[..., None], ring["bbox"], margin)[..., 0]
            assert not (off & ~rings_near & near_box(pixels, ring["bbox"], margin)).any()


def descriptors(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ring of ``root``'s trainval images: the descriptor of its crop (the ring itself and
    everything within CONTEXT_DISTANCE / 2), that of the region it lies in, and its class."""
    crops, regions, labels = [], [], []
    for pixels, rings, around in objects(root):
        for ring in rings:
            crop = window(pixels, ring["bbox"], CONTEXT_DISTANCE // 2)
            fill = np.median(crop.reshape(-1, 3), axis=0)  # the region's
            region = next(g for g in around if g["category_id"] == ring["category_id"])
            # the ring itself (and its edge), and its surroundings
            crops.append(
                np.concatenate(
                    [silhouette(window(pixels, ring["bbox"], 1), fill), silhouette(crop, fill)]
                )
            )
            regions.append(outline(window(pixels, region["bbox"], 0), fill))
            labels.append(ring["category_id"])
    return np.stack(crops), np.stack(regions), np.array(labels)


def majority_share(labels: np.ndarray) -> float:
    """The accuracy of always answering the commonest class."""
    return np.bincount(labels).max() / len(labels)


def test_a_rings_crop_does_not_tell_its_class_and_its_region_does(context_data: Path) -> None:
    """A nearest-class-mean classifier on a colour-blind outline descriptor: on the crops around
    the rings (everything within CONTEXT_DISTANCE / 2) it does no better than always answering
    the commonest class; on the regions the rings lie in it does far better."""
    crops, regions, labels = descriptors(context_data)
    assert nearest_centroid_accuracy(crops, labels) <= majority_share(labels) + 0.05
    assert nearest_centroid_accuracy(regions, labels) >= majority_share(labels) + 0.3


def test_the_crop_descriptor_tells_rings_apart_where_their_thickness_tells_the_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above can fail: with each class's rings painted to its own inner radius (the
    circle's as generated, the ellipse's a full disc), the same classifier on the same crop
    descriptor tells the classes apart."""
    inner = {
        CLASSES.index(name): f
        for name, f in zip(CONTEXT_RING_CLASSES, (0.5, 0.35, 0.2, 0), strict=True)
    }
    draw_ring = shapes._draw_ring

    def class_thick_ring(img, ring, colour, label):  # type: ignore[no-untyped-def]
        obj = draw_ring(img, ring, colour, label)
        cy, cx, radius = ring
        r = math.ceil(radius)
        distance = np.hypot(*np.ogrid[-r : r + 1, -r : r + 1])
        thicker = (distance < radius / 2) & (distance >= radius * inner[label])
        img[cy - r : cy + r + 1, cx - r : cx + r + 1][thicker] = colour
        return obj

    monkeypatch.setattr(shapes, "_draw_ring", class_thick_ring)
    root = generate_shapes(tmp_path, num_trainval=80, num_test=1, num_val=1, variant="context")
    crops, _, labels = descriptors(root)
    assert nearest_centroid_accuracy(crops, labels) >= majority_share(labels) + 0.3


def test_the_plain_data_is_unchanged_by_the_variants(tmp_path: Path) -> None:
    """The plain data's stamp has no variant key (data built before variants stays valid), and a
    directory of one variant is not silently read as the other."""
    root = generate_shapes(tmp_path / "plain", num_trainval=2, num_test=1, num_val=1)
    assert "variant" not in shapes.read_stamp(root)
    with pytest.raises(UserError, match="holds the 'plain' shapes data, not 'context'"):
        shapes.ensure_shapes(root, "context")
    context = generate_shapes(
        tmp_path / "context", num_trainval=2, num_test=1, num_val=1, variant="context"
    )
    assert shapes.read_stamp(context)["variant"] == "context"
    assert shapes.ensure_shapes(context, "context") == context


def test_a_tiny_run_of_the_context_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make ablation ABLATION=shapes_context`, 2 iterations a row on tiny context data (the
    product fusion and the rows it needs): every run trained and tested on the context variant,
    and the table and the analysis compare DSSD with the control; then how far the control's
    and DSSD's predictions at the rings reach (`python -m dssd.tools.context_reach`)."""
    data = generate_shapes(
        tmp_path / "data", num_trainval=16, num_test=8, num_val=8, variant="context"
    )
    out = tmp_path / "probe"
    run_in_process(
        "ablation.py",
        "ablation=shapes_context",
        f"out_dir={out}",
        "only=[dssd_prod]",
        "bootstrap_samples=100",
        f'train_args="{" ".join(tiny_overrides(data))} logger=csv"',
    )
    table = (out / "table4.md").read_text()
    for name in ("SSD 321 + PM(c) |", "(control)", "DM(Eltw-prod)"):
        assert name in table
    assert "DM(Eltw-sum)" not in table
    for row in ("ssd_pm_c", "ssd_pm_c_control", "dssd_prod"):
        config = yaml.safe_load((out / row / "seed0" / ".hydra" / "config.yaml").read_text())
        assert config["data"]["variant"] == "context" and config["data"]["root"] == str(data)
    assert (out / "analysis" / "dssd_prod_vs_ssd_pm_c_control" / "summary.md").is_file()

    capsys.readouterr()
    context_reach.main(
        [
            str(out / "ssd_pm_c_control" / "seed0"),
            str(out / "dssd_prod" / "seed0"),
            "--objects",
            "4",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | objects | maps | share beyond 40 px |")
    assert len(lines) == 4 and all("| 4 |" in line for line in lines[2:])
