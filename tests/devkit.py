"""An independent port of the PASCAL VOC devkit's evaluation (py-faster-rcnn's ``voc_eval.py``,
itself a port of the MATLAB ``VOCevaldet``), for the tests to compare the project's metric with.

It imports nothing from ``dssd``: it parses the annotation XML itself (``parse_rec``), reads the
devkit's result files ``comp4_det_test_<class>.txt`` (``voc_eval``), and keeps the devkit's own
coordinates: 1-based, inclusive pixel indices, ``+1`` on every width and height.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


def parse_rec(filename: str | Path) -> list[dict]:
    """The objects of one annotation file, as ``voc_eval.py``'s ``parse_rec`` reads them."""
    objects = []
    for obj in ET.parse(filename).findall("object"):
        bbox = obj.find("bndbox")
        difficult = obj.find("difficult")
        objects.append(
            {
                "name": obj.find("name").text,
                "difficult": int(difficult.text) if difficult is not None else 0,
                "bbox": [
                    int(float(bbox.find(tag).text)) for tag in ("xmin", "ymin", "xmax", "ymax")
                ],
            }
        )
    return objects


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_class(
    recs: dict[str, list[dict]],
    detections: list[tuple[str, float, list[float]]],
    classname: str,
    ovthresh: float = 0.5,
    use_07_metric: bool = True,
) -> tuple[float, dict[str, int]]:
    """AP of ``classname`` (NaN without positives) and the counts of TP / FP / ignored /
    duplicate detections: ``voc_eval.py``'s loop. ``recs`` maps image names to their objects,
    ``detections`` are (image name, score, [xmin, ymin, xmax, ymax]) in devkit coordinates."""
    class_recs = {}
    npos = 0
    for imagename, objects in recs.items():
        R = [obj for obj in objects if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R], dtype=float).reshape(-1, 4)
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(R)}

    image_ids = [d[0] for d in detections]
    confidence = np.array([d[1] for d in detections], dtype=float)
    BB = np.array([d[2] for d in detections], dtype=float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    counts = {"tp": 0, "fp": 0, "ignored": 0, "duplicate": 0}
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                    counts["tp"] += 1
                else:
                    fp[d] = 1.0
                    counts["fp"] += 1
                    counts["duplicate"] += 1
            else:
                counts["ignored"] += 1
        else:
            fp[d] = 1.0
            counts["fp"] += 1

    if npos == 0:
        return math.nan, counts
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric), counts


def voc_eval(
    detpath: str,
    annopath: str,
    imagesetfile: str | Path,
    classname: str,
    ovthresh: float = 0.5,
    use_07_metric: bool = True,
) -> float:
    """``voc_eval.py``'s entry point: ``detpath.format(classname)`` is the result file,
    ``annopath.format(imagename)`` an annotation file, ``imagesetfile`` the image list."""
    imagenames = [x.strip() for x in Path(imagesetfile).read_text().splitlines() if x.strip()]
    recs = {name: parse_rec(annopath.format(name)) for name in imagenames}
    lines = [x.strip().split(" ") for x in Path(detpath.format(classname)).read_text().splitlines()]
    detections = [(x[0], float(x[1]), [float(z) for z in x[2:]]) for x in lines if x[0]]
    return evaluate_class(recs, detections, classname, ovthresh, use_07_metric)[0]


def voc_eval_map(
    results_dir: str | Path, root: str | Path, split: str, class_names: list[str], **kwargs
) -> float:
    """Mean AP over the classes with positives, from a VOC-layout ``root`` and the result files
    in ``results_dir``."""
    aps = [
        voc_eval(
            str(Path(results_dir) / "comp4_det_test_{}.txt"),
            str(Path(root) / "Annotations" / "{}.xml"),
            Path(root) / "ImageSets" / "Main" / f"{split}.txt",
            name,
            **kwargs,
        )
        for name in class_names
    ]
    return float(np.nanmean(aps))
