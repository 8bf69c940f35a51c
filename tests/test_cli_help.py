"""Every command-line tool's ``--help``: each option says what it does, and its default where it
has one (not "default: None")."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from dssd.tools import HelpFormatter

COMMANDS = [
    "dssd.data.shapes",
    "dssd.tools.anchor_coverage",
    "dssd.tools.anchor_kmeans",
    "dssd.tools.context_reach",
    "dssd.tools.network_table",
    "dssd.tools.show_augmentation",
    "benchmarks.speed",
    "benchmarks.baselines",
    "benchmarks.export",
    "benchmarks.sampling",
    "benchmarks.search",
]


class _StopAtParseError(Exception):
    """Raised in place of parsing, carrying the parser that the command built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def built_parser(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser that ``module``'s command line builds, caught as it parses."""

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _StopAtParseError(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    command = importlib.import_module(module)
    entry = getattr(command, "parse_args", None) or command.main
    with pytest.raises(_StopAtParseError) as caught:
        entry([])
    return caught.value.parser


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_says_what_it_does_and_its_default(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = built_parser(module, monkeypatch)
    assert parser.formatter_class is HelpFormatter
    assert parser.prog == f"python -m {module}"
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented, f"{module}: options without help: {undocumented}"
    text = parser.format_help()
    assert "default: None" not in text and "default: False" not in text


def test_help_formatter_adds_only_defaults_worth_saying() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the seed")
    parser.add_argument("--out", help="where")
    parser.add_argument("--quick", action="store_true", help="fast")
    parser.add_argument("--size", type=int, default=3, help="side (default: the model's)")
    text = " ".join(parser.format_help().split())
    assert "the seed (default: 0)" in text
    assert "where" in text and "fast" in text and "default: None" not in text
    assert "default: False" not in text
    assert "side (default: the model's)" in text and "(default: 3)" not in text


def bad_invocations(data: str, tmp: str) -> list[tuple[str, list[str], str]]:
    """(module, arguments, what its one error line says) of mistakes a tool must name, not
    answer with a traceback or a silent wrong result."""
    return [
        ("dssd.tools.anchor_coverage", ["--picture"], "--picture draws into --out"),
        ("dssd.tools.anchor_coverage", ["--threshold", "0"], "an IoU in (0, 1]"),
        ("dssd.tools.anchor_coverage", ["model=nonexistent"], "Could not find 'model/nonexistent'"),
        (
            "dssd.tools.anchor_coverage",
            ["--out", f"{data}/ImageSets/Main/test.txt/coverage"],
            "test.txt is a file, not a directory",
        ),
        ("dssd.tools.anchor_coverage", ["--out", f"{tmp}/c.json"], "give the directory"),
        (
            "dssd.tools.anchor_coverage",
            ["model=ssd_r18", "model.net.image_size=abc"],
            "model.net.image_size='abc': give the input side in pixels",
        ),
        ("dssd.tools.anchor_kmeans", ["--root", data, "--seed", "-1"], "--seed: '-1': give"),
        (
            "dssd.tools.anchor_kmeans",
            ["--root", data, "--min-improvement", "20"],
            "'20': give a share in [0, 1), e.g. 0.2 for 20%",
        ),
        ("dssd.tools.anchor_kmeans", ["--root", data, "--start", "0"], "need 1 <= --start"),
        ("dssd.tools.anchor_kmeans", ["--coco", data], "is not a file"),
        (
            "dssd.tools.anchor_kmeans",
            ["--coco", f"{data}/ImageSets/Main/test.txt"],
            "not valid JSON",
        ),
        ("dssd.tools.network_table", ["--classes", "0"], "--classes 0: at least 1"),
        ("dssd.tools.network_table", ["ssd_r18", "--out", tmp], "is a directory"),
        ("dssd.tools.network_table", ["model=ssd_r18"], "(give the config's name, and its"),
        ("dssd.tools.context_reach", [tmp, "--objects", "0"], "--objects: '0': give a whole"),
        ("dssd.tools.context_reach", [tmp, "--max-size", "0"], "'0': give a length in pixels"),
        ("dssd.tools.context_reach", [f"{tmp}/none"], f"error: {tmp}/none: no such run directory"),
        ("dssd.tools.context_reach", [tmp, "--distance", "-10"], "'-10': give a length in"),
        ("dssd.tools.show_augmentation", ["--root", data, "--rows", "0"], "--rows: '0': give a"),
        ("dssd.tools.show_augmentation", ["--root", data, "--seed", "-1"], "--seed: '-1': give"),
        (
            "dssd.tools.show_augmentation",
            ["--root", f"{data}/ImageSets/Main/test.txt"],
            "test.txt is a file, not a directory",
        ),
        ("dssd.tools.show_augmentation", ["--root", data, "--out", tmp], "a .png or .jpg file"),
        ("dssd.tools.show_augmentation", ["--root", f"{tmp}/none"], "does not exist"),
        # benchmarks: counts below what a timing needs, outputs that cannot be written
        ("benchmarks.speed", ["--iters", "0"], "--iters: '0': give a whole number of at least 1"),
        ("benchmarks.speed", ["--large-batch", "0"], "--large-batch: '0': give a whole number"),
        (
            "benchmarks.speed",
            ["--warmup", "-1"],
            "--warmup: '-1': give a whole number of at least 0",
        ),
        (
            "benchmarks.speed",
            ["--profile", "/proc/dssd_profile"],
            "--profile=/proc/dssd_profile: cannot write",
        ),
        ("benchmarks.speed", ["--out", tmp], "is a directory"),
        (
            "benchmarks.speed",
            ["--out", f"{tmp}/a", "--json", f"{tmp}/a"],
            "--out and --json name one file",
        ),
        ("benchmarks.speed", ["--train-batch", "1"], "batch norm cannot train on batches of one"),
        (
            "benchmarks.speed",
            ["--only", "training", "--train-batch", "0"],
            "--only training with --train-batch 0 times nothing",
        ),
        ("benchmarks.speed", ["--score-threshold", "nan"], "give a score in [0, 1)"),
        ("benchmarks.speed", ["--device", "foo"], "--device foo: give cpu, cuda"),
        ("benchmarks.speed", ["--train-data", "nosuch"], "--train-data nosuch: no such data"),
        (
            "benchmarks.speed",
            ["--models", "ssd_r18", "--quick", "--only", "inference", "--image-size", "16"],
            "model.net.image_size=16 is too small for this network",
        ),
        ("benchmarks.speed", ["--models", "ssd_r18:pm=zz", "--quick"], "Could not find 'pm/zz'"),
        ("benchmarks.export", ["--models", "nosuch"], "no model config 'nosuch' in conf/model/"),
        (
            "benchmarks.export",
            ["--models", "ssd_r18 pm=c"],
            "(give the config's name, and its overrides after a colon: ssd321:pm=c)",
        ),
        ("benchmarks.export", ["--models", "ssd_r18:pm=zz"], "Could not find 'pm/zz'"),
        ("benchmarks.baselines", ["--batch-size", "x"], "--batch-size: 'x': give a whole number"),
        ("benchmarks.baselines", ["--json", tmp], "is a directory"),
        ("benchmarks.export", ["--batches", "1", "0"], "--batches: '0': give a whole number"),
        ("benchmarks.search", ["--iters", "0"], "--iters: '0': give a whole number"),
        ("benchmarks.search", ["model=dssd_r18"], "model=dssd_r18: the candidates are"),
        (
            "benchmarks.sampling",
            ["--data-root", data, "--results", tmp, "--samples", "1"],
            "--samples: '1': give a whole number of at least 2",
        ),
    ]


def test_mistakes_are_one_error_line(tiny_shapes, tmp_path, capsys) -> None:
    for module, args, problem in bad_invocations(str(tiny_shapes), str(tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            importlib.import_module(module).main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (module, args, err)
        assert problem in err and "Traceback" not in err, (module, args, err)


def test_show_augmentation_sheet_holds_whole_tiles(tiny_shapes: Path, tmp_path: Path) -> None:
    """Tiles of --size pixels, GAP apart, nothing cropped: also a grid of one tile."""
    import cv2

    from dssd.tools import show_augmentation

    out = tmp_path / "sheet.png"
    for rows, cols in ((1, 1), (2, 3)):
        grid = ["--rows", str(rows), "--cols", str(cols), "--size", "64", "--out", str(out)]
        show_augmentation.main(["--root", str(tiny_shapes), *grid])
        gap = show_augmentation.GAP
        assert cv2.imread(str(out)).shape == (
            64 * rows + gap * (rows - 1),
            64 * cols + gap * (cols - 1),
            3,
        )
