"""benchmarks.sampling: chunk by chunk VOC mAP against the devkit's, and the bootstrap check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import sampling
from devkit import voc_eval_map
from dssd.data.voc import VOCDataset
from dssd.errors import UserError
from dssd.evaluation.matched_run import results_per_image
from test_voc_devkit import CLASSES, small_object_devkit

CHUNK = 10  # small_object_devkit writes 30 test images: three chunks


def rescored(results: Path, out: Path, seed: int) -> Path:
    """``results`` with every detection's score drawn anew: another run on the same images."""
    rng = np.random.default_rng(seed)
    out.mkdir()
    for path in results.iterdir():
        lines = [line.split() for line in path.read_text().splitlines()]
        text = "".join(f"{i} {rng.random():.5f} {' '.join(box)}\n" for i, _, *box in lines)
        (out / path.name).write_text(text)
    return out


def devkit_chunk(root: Path, results: Path, ids: list[str], name: str) -> float:
    """The devkit's mAP on the images ``ids`` alone: their own split and result files."""
    (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    kept = root / f"{results.name}_{name}"
    kept.mkdir()
    for path in results.iterdir():
        lines = [line for line in path.read_text().splitlines(True) if line.split()[0] in ids]
        (kept / path.name).write_text("".join(lines))
    return 100 * voc_eval_map(kept, root, name, list(CLASSES))


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, list[Path]]:
    root, _ = small_object_devkit(tmp_path / "VOC2007", seed=3)
    return root, [root / "results", rescored(root / "results", root / "other", seed=1)]


def load(root: Path, dirs: list[Path]) -> tuple[dict, list]:
    dataset = VOCDataset(root, "test", CLASSES)
    return {str(d): results_per_image(d, dataset.ids, CLASSES) for d in dirs}, dataset


def test_chunk_and_whole_maps_equal_the_devkits(two_runs: tuple[Path, list[Path]]) -> None:
    root, dirs = two_runs
    detections, dataset = load(root, dirs)
    result = sampling.measure(detections, dataset.annotations, len(CLASSES), CHUNK, 200)

    assert result.chunk_maps.shape == (2, 3)
    for r, d in enumerate(dirs):
        assert result.whole_maps[r] == pytest.approx(
            100 * voc_eval_map(d, root, "test", list(CLASSES)), abs=1e-4
        )
        for k in range(3):
            ids = dataset.ids[k * CHUNK : (k + 1) * CHUNK]
            expected = devkit_chunk(root, d, ids, f"chunk{k}")
            assert result.chunk_maps[r, k] == pytest.approx(expected, abs=1e-4)
    # the runs differ, so do their scores on every chunk
    assert np.all(result.seed_std_chunks > 0)
    assert result.seed_std_chunk == pytest.approx(np.sqrt(np.mean(result.seed_std_chunks**2)))
    assert result.seed_std_whole == pytest.approx(np.std(result.whole_maps, ddof=1))
    (pair,) = result.pairs
    assert pair.whole == pytest.approx(result.whole_maps[0] - result.whole_maps[1])
    assert pair.spread == pytest.approx(np.std(np.diff(result.chunk_maps[::-1], axis=0), ddof=1))
    assert pair.bootstrap_std > 0 and 0 <= pair.covered <= 3


def test_a_run_against_itself_has_no_spread_and_every_interval_covers(
    two_runs: tuple[Path, list[Path]],
) -> None:
    root, dirs = two_runs
    detections, dataset = load(root, dirs[:1])
    same = {"a": detections[str(dirs[0])], "b": detections[str(dirs[0])]}
    result = sampling.measure(same, dataset.annotations, len(CLASSES), CHUNK, 200)
    (pair,) = result.pairs
    assert (pair.whole, pair.spread, pair.bootstrap_std, pair.covered) == (0.0, 0.0, 0.0, 3)
    assert result.seed_std_whole == 0.0 and np.all(result.seed_std_chunks == 0)
    assert result.run_std_chunk > 0  # the chunks themselves still differ


def test_too_few_runs_or_images_are_refused(two_runs: tuple[Path, list[Path]]) -> None:
    root, dirs = two_runs
    detections, dataset = load(root, dirs)
    with pytest.raises(UserError, match="at least two runs"):
        sampling.measure({"a": detections[str(dirs[0])]}, dataset.annotations, 2, CHUNK)
    with pytest.raises(UserError, match="fewer than two chunks of 20"):
        sampling.measure(detections, dataset.annotations, 2, chunk=20)


def test_command_prints_every_run_and_pair(
    two_runs: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, dirs = two_runs
    argv = ["--data-root", str(root), "--classes", *CLASSES, "--chunk", str(CHUNK)]
    sampling.main([*argv, "--samples", "100", "--results", *map(str, dirs)])
    out = capsys.readouterr().out
    assert out.startswith("VOC mAP on 3 chunks of 10 test images | on all 30")
    # chunks of 8: three whole ones, and the whole split's figure over all 30 images
    sampling.main([*argv[:-1], "8", "--samples", "100", "--results", *map(str, dirs)])
    assert capsys.readouterr().out.startswith("VOC mAP on 3 chunks of 8 test images | on all 30")
    # each run named by its path below their shared directory
    assert "  results: " in out and "  other: " in out
    assert "  results - other: " in out and "intervals cover" in out
    with pytest.raises(SystemExit):
        sampling.main([*argv, "--results", str(dirs[0]), str(dirs[0])])
    assert "names a directory more than once" in capsys.readouterr().err
    # the test split's detections scored on another split: one error line, not a traceback
    ids = VOCDataset(root, "test", CLASSES).ids
    (root / "ImageSets" / "Main" / "part.txt").write_text("".join(f"{i}\n" for i in ids[:10]))
    with pytest.raises(SystemExit) as exit_info:
        sampling.main([*argv, "--split", "part", "--results", *map(str, dirs)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: --split part: " in err and "20 images that are not in the split scored" in err
