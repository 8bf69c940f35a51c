"""DSSD's staged training: start from an earlier stage's weights, keep parts of the network fixed
(stage 1: the stage-0 SSD's backbone and extras; stage 2: every batch norm)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dssd.errors import UserError
from dssd.training.checkpoints import not_a_checkpoint, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """Which tensors were loaded, new, dropped or re-initialised (heads of another class count)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"init_from {self.source}:"]
        for title, names in (
            ("loaded", self.loaded),
            ("new (initialised here)", self.new),
            ("dropped (in the checkpoint, not used)", self.dropped),
            ("re-initialised (classification heads of another class count)", self.reinitialised),
        ):
            # counts per top-level module: ' in net.backbone (120), net.extras (30)'
            counts = Counter(".".join(name.split(".")[:2]) for name in names)
            where = " in " + ", ".join(f"{m} ({n})" for m, n in counts.items()) if counts else ""
            lines.append(f"  {title}: {len(names)} tensors{where}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights of a checkpoint written by train.py (or of a plain ``state_dict`` file)."""
    checkpoint = read_checkpoint(path, "init_from")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise not_a_checkpoint(path, "it holds no state_dict of tensors")
    return state


def load_initial_weights(
    model: nn.Module, path: str | Path, modules: Sequence[str] | None = None
) -> InitReport:
    """Load the weights of checkpoint ``path`` into ``model``: all of ``modules`` (``backbone``,
    ... of ``model.net``; None: every tensor named in both), except classification heads of
    another class count (re-initialised); another shape or a missing module is a UserError."""
    source = read_state_dict(path)
    target = model.state_dict()
    # every name starts with "": no modules named, every tensor is wanted
    prefixes = ("",) if modules is None else tuple(f"net.{m}." for m in modules)
    if modules is not None:
        unknown = [m for m in modules if not any(n.startswith(f"net.{m}.") for n in target)]
        if unknown:
            raise UserError(f"init_modules names {unknown}, which this network does not have")
        missing = [n for n in target if n.startswith(prefixes) and n not in source]
        if missing:
            raise UserError(
                f"init_from {path} lacks {len(missing)} tensors of {list(modules)}, e.g. "
                f"{missing[:3]}: was it trained with another backbone or extra layers?"
            )
    load = {n: t for n, t in source.items() if n in target and n.startswith(prefixes)}
    # classification heads that differ only in their output channels (boxes x (classes + 1))
    reinitialised = [
        n
        for n, t in load.items()
        if n.startswith("net.heads.conf.")
        and t.shape != target[n].shape
        and t.shape[1:] == target[n].shape[1:]
    ]
    load = {n: t for n, t in load.items() if n not in reinitialised}
    mismatched = [n for n, t in load.items() if t.shape != target[n].shape]
    if mismatched:
        details = "; ".join(
            f"{n}: checkpoint {list(load[n].shape)}, network {list(target[n].shape)}"
            for n in mismatched[:5]
        )
        raise UserError(
            f"init_from {path}: {len(mismatched)} tensors have other shapes than in this network "
            f"({details}). Was it trained for another model or number of classes? Choose the "
            "modules to load with stages.<stage>.init_modules."
        )
    model.load_state_dict(load, strict=False)
    report = InitReport(
        source=str(path),
        loaded=list(load),
        new=[n for n in target if n not in load and n not in reinitialised],
        dropped=[n for n in source if n not in load and n not in reinitialised],
        reinitialised=reinitialised,
    )
    log.info(report.summary())
    if reinitialised:
        log.warning(
            "init_from %s was trained with another number of classes: its classification heads "
            "(%d tensors) are re-initialised, everything else is loaded",
            path,
            len(reinitialised),
        )
    return report


def freeze_modules(net: nn.Module, modules: Sequence[str], batchnorm: bool) -> list[str]:
    """Fix the named submodules of ``net`` (with ``batchnorm``, every BN of ``net``): no gradients,
    batch norms in eval mode. Returns those batch norms' names in ``net``, to keep in eval mode
    in training (names, not modules: sync BN under DDP replaces the modules)."""
    children = dict(net.named_children())
    unknown = [m for m in modules if m not in children]
    if unknown:
        raise UserError(
            f"cannot freeze {unknown}: the network's modules are {list(children)} "
            "(see `stages` in conf/train.yaml)"
        )
    frozen = [children[m] for m in modules]
    for module in frozen:
        module.requires_grad_(False)
    scope = [net] if batchnorm else frozen
    norms = {id(m): m for f in scope for m in f.modules() if isinstance(m, _BatchNorm)}
    for m in norms.values():
        m.requires_grad_(False)
        m.eval()
    if frozen or norms:
        log.info(
            "Frozen: %s; %d batch norms kept in eval mode, on their running statistics",
            ", ".join(modules) or "no module",
            len(norms),
        )
    names = {id(m): name for name, m in net.named_modules()}
    return [names[id(m)] for m in norms.values()]
