"""python -m dssd.tools.network_table: Table 2 of a network (boxes, parameters, GMAC) from code."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from dssd.config import compose_train
from dssd.tools import network_table
from test_search import conv_gmac


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str]:
    out = tmp_path_factory.mktemp("networks") / "networks.md"
    argv = ["ssd_r18:pm=c", "ssd_r18:pm=c,neck=fpn", "ssd_r18w32:backbone=mobilenet_v3_large"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rows = network_table.main([*argv, "--classes", "6", "--out", str(out)])
    assert out.read_text().strip() == printed.getvalue().strip()
    return rows, out.read_text()


def test_rows_are_the_networks_counted_independently(table: tuple[list[dict], str]) -> None:
    rows, _ = table
    for row in rows:
        overrides = network_table.spec_overrides(row["network"])
        torch.manual_seed(0)
        net = instantiate(compose_train(overrides).model.net)
        assert row["boxes"] == len(net.priors)
        assert row["parameters"] == sum(p.numel() for p in net.parameters())
        # every MAC of these networks is a convolution's, which hooks count from the shapes
        assert row["gmac"] == pytest.approx(conv_gmac(net), rel=1e-9)
    assert [r["neck"] for r in rows] == ["none", "fpn", "none"]
    assert [r["backbone"] for r in rows] == ["resnet18", "resnet18", "mobilenet_v3_large"]
    assert rows[0]["boxes"] == 6128  # ssd_r18: 24, 12, 6, 3, 1 maps
    assert rows[2]["sources"][:2] == ["41x41x40", "21x21x960"]
    assert rows[1]["sources"] == [f"{s}x{s}x128" for s in (24, 12, 6, 3, 1)]


def test_markdown_lists_every_network(table: tuple[list[dict], str]) -> None:
    rows, text = table
    for row in rows:
        assert f"| `{row['network']}` | {row['backbone']} | {row['neck']} |" in text
        assert f"{row['parameters'] / 1e6:.2f} | {row['gmac']:.2f} |" in text


def test_an_unknown_model_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error listing the model configs, exit status 2; an override of the model, given
    as an argument of its own, gets the colon form."""
    with pytest.raises(SystemExit) as exit_info:
        network_table.main(["no_such_model"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: argument networks: no model config 'no_such_model' in conf/model/" in err
    assert "; the configs: " in err and "ssd321" in err
    with pytest.raises(SystemExit):
        network_table.main(["ssd_r18", "pm=c"])
    assert "'pm=c' in conf/model/ (give the config's name, and its overrides after a colon" in (
        capsys.readouterr().err
    )


def test_default_networks_compose() -> None:
    for spec in network_table.DEFAULT_NETWORKS:
        cfg = compose_train(network_table.spec_overrides(spec))
        assert Path(cfg.model.net._target_.replace(".", "/")).name == "SSD"


def test_an_entry_s_overrides_split_at_commas_outside_brackets_and_quotes() -> None:
    """``benchmarks.speed`` and ``benchmarks.export`` read ``--models`` entries with it: a list
    or a quoted value keeps its commas."""
    spec = "ssd_r18:model.net.aspect_ratios=[2.0,3.0],pm=c,+model.note='a, b'"
    overrides = network_table.spec_overrides(spec)
    assert overrides == [
        "model=ssd_r18",
        "model.net.aspect_ratios=[2.0,3.0]",
        "pm=c",
        "+model.note='a, b'",
    ]
    cfg = compose_train(overrides)
    assert list(cfg.model.net.aspect_ratios) == [2.0, 3.0] and cfg.model.note == "a, b"
    assert network_table.spec_overrides("dssd321") == ["model=dssd321"]
