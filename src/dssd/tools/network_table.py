"""The paper's Table 2 for any network, from the code: its source maps, default boxes, parameters
and multiply-accumulates per image.

A network is a model config, optionally with its own overrides after a colon
(``dssd321:backbone=convnext_tiny,neck=fpn``); by default, :data:`DEFAULT_NETWORKS`.

    python -m dssd.tools.network_table
    python -m dssd.tools.network_table dssd321:backbone=mobilenet_v3_large ssd_r18w32:neck=bifpn
    python -m dssd.tools.network_table --out docs/networks.md
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from dssd.config import compose_train, conf_dir
from dssd.errors import user_errors, writable_file
from dssd.models.cost import gmac
from dssd.results.tables import markdown_table
from dssd.tools import HelpFormatter

NECK_NAMES = {  # the neck= choice of each neck class
    "dssd.models.Decoder": "dssd",
    "dssd.models.FPN": "fpn",
    "dssd.models.PANet": "panet",
    "dssd.models.BiFPN": "bifpn",
}
# the paper's SSD321/DSSD321 and SSD513/DSSD513, DSSD321 with each later neck and other backbone,
# and the CPU-sized DSSD with each neck (the networks of ``make ablation ABLATION=necks_shapes``)
DEFAULT_NETWORKS = (
    "ssd321:pm=c",
    "dssd321",
    *(f"dssd321:neck={neck}" for neck in ("fpn", "panet", "bifpn")),
    *(f"dssd321:backbone={b}" for b in ("resnet50", "mobilenet_v3_large", "convnext_tiny")),
    "ssd513:pm=c",
    "dssd513",
    "dssd513:backbone=mobilenet_v3_large",
    "ssd_r18:pm=c",
    "dssd_r18",
    *(f"dssd_r18:neck={neck}" for neck in ("fpn", "panet", "bifpn")),
)


def model_names() -> list[str]:
    """The model configs: ``conf/model/<name>.yaml``."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def model_spec(spec: str) -> str:
    """An argparse ``type``: a model config's name, optionally ``:`` and comma-separated
    overrides of that model's own (``dssd_r18:neck=fpn,pm=c``), checked."""
    name, names = spec.split(":", 1)[0], model_names()
    if name not in names:
        hint = ""
        if " " in name or "=" in name:
            hint = " (give the config's name, and its overrides after a colon: ssd321:pm=c)"
        raise argparse.ArgumentTypeError(
            f"no model config {name!r} in conf/model/{hint}; the configs: {', '.join(names)}"
        )
    return spec


def spec_overrides(spec: str) -> list[str]:
    """``dssd321:neck=fpn,backbone=resnet50`` -> ``["model=dssd321", "neck=fpn",
    "backbone=resnet50"]``; a comma inside brackets, braces or quotes belongs to its value
    (``ssd_r18:model.net.prediction_module.kernel_sizes=[1,3],pm=c``)."""
    name, _, own = spec.partition(":")
    overrides, current, depth, quote = [], "", 0, ""
    for char in own:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            overrides.append(current)
            current = ""
            continue
        current += char
    return [f"model={name}", *(o for o in [*overrides, current] if o)]


def backbone_name(backbone: Any) -> str:
    """A backbone config's short name: ``resnet101``, ``resnet18 w32``, ``VGGBackbone``..."""
    if "name" in backbone:
        return str(backbone.name)
    if "depth" in backbone:
        width = backbone.get("width", 64)
        return f"resnet{backbone.depth}" + (f" w{width}" if width != 64 else "")
    return str(backbone._target_).rsplit(".", 1)[-1]


def network_row(spec: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One network's row of Table 2 (source maps after the neck, GMAC per image)."""
    cfg = compose_train([*spec_overrides(spec), *overrides])
    net = instantiate(cfg.model.net)
    neck = cfg.model.net.neck
    sources = net.decoder.out_channels if net.decoder is not None else None
    sources = sources or [*net.backbone.out_channels, *net.extras.out_channels]
    return {
        "network": spec,
        "backbone": backbone_name(cfg.model.net.backbone),
        "neck": NECK_NAMES.get(neck._target_, neck._target_) if neck else "none",
        "input": net.image_size,
        "sources": [f"{s}x{s}x{c}" for s, c in zip(net.feature_sizes, sources, strict=True)],
        "boxes": len(net.priors),
        "parameters": sum(p.numel() for p in net.parameters()),
        "gmac": gmac(net),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    header = ["network", "backbone", "neck", "input", "source maps", "boxes", "params (M)", "GMAC"]
    lines = [
        [
            f"`{r['network']}`",
            r["backbone"],
            r["neck"],
            r["input"],
            ", ".join(r["sources"]),
            f"{r['boxes']:,}",
            f"{r['parameters'] / 1e6:.2f}",
            f"{r['gmac']:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(header, lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command line: print (and write) the table; return its rows."""
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.network_table",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "networks",
        nargs="*",
        default=list(DEFAULT_NETWORKS),
        type=model_spec,
        help="model configs, each optionally with ':' and comma-separated overrides",
    )
    parser.add_argument("--classes", type=int, default=20, help="object classes (VOC: 20)")
    parser.add_argument(
        "--out", type=Path, help="also write the markdown table here; default: print only"
    )
    args = parser.parse_args(argv)
    if args.classes < 1:
        parser.error(f"--classes {args.classes}: at least 1")
    classes = ",".join(f"c{i}" for i in range(args.classes))
    with user_errors():
        if args.out:
            writable_file(args.out, "--out")
        rows = [network_row(spec, [f"data.class_names=[{classes}]"]) for spec in args.networks]
    text = markdown(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
