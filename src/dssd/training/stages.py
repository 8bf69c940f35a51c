"""DSSD's staged training: start from an earlier stage's weights, keep parts of the network fixed.

Stage 1 loads the stage-0 SSD's backbone and extra layers and trains only the new deconvolution
side, prediction modules and heads; stage 2 fine-tunes everything with every batch norm fixed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dssd.errors import UserError
from dssd.training.checkpoints import not_a_checkpoint, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """Which tensors of the network came from the checkpoint, which are new, which were left, and
    which classification heads were re-initialised because the class count differs."""

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
            lines.append(f"  {title}: {len(names)} tensors{_by_module(names)}")
        return "\n".join(lines)


def _by_module(names: Iterable[str]) -> str:
    """' in net.backbone (120), net.extras (30)': counts per top-level module of the network."""
    counts = Counter(".".join(name.split(".")[:2]) for name in names)
    if not counts:
        return ""
    return " in " + ", ".join(f"{module} ({n})" for module, n in counts.items())


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
    """Load the weights of checkpoint ``path`` into ``model`` and report what was loaded.

    Args:
        model: the module being trained (its ``state_dict`` names, e.g. ``net.backbone.…``).
        path: a checkpoint from ``src/train.py`` (or a file holding a bare ``state_dict``).
        modules: network modules (``backbone``, ``extras``, … under ``model.net``) whose tensors
            must all come from the checkpoint; tensors elsewhere are left as initialised. ``None``
            loads every tensor whose name is in both.

    A checkpoint trained on another class list (fine-tuning on new data) differs only in the
    classification heads' output channels: those are left as initialised and reported as
    re-initialised, and everything else is loaded.

    Raises:
        UserError: a tensor to load has another shape in the checkpoint (other than the
            classification heads' class count), or a module listed in ``modules`` is missing
            from it, naming the tensors.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    prefixes = None if modules is None else tuple(f"net.{m}." for m in modules)

    def wanted(name: str) -> bool:
        return prefixes is None or name.startswith(prefixes)

    if prefixes is not None:
        unknown = [m for m in modules if not any(n.startswith(f"net.{m}.") for n in target)]
        if unknown:
            raise UserError(f"init_modules names {unknown}, which this network does not have")
        missing = [n for n in target if wanted(n) and n not in source]
        if missing:
            raise UserError(
                f"init_from {path} lacks {len(missing)} tensors of {list(modules)}, e.g. "
                f"{missing[:3]}: was it trained with another backbone or extra layers?"
            )
    load = {n: t for n, t in source.items() if n in target and wanted(n)}
    reinitialised = [n for n, t in load.items() if _other_class_count(n, t, target[n])]
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


def _other_class_count(name: str, saved: Tensor, current: Tensor) -> bool:
    """Whether ``name`` is a classification head's tensor that differs only in its output
    channels (``boxes x (classes + 1)``), as when the checkpoint has another class list."""
    return (
        name.startswith("net.heads.conf.")
        and saved.shape != current.shape
        and saved.shape[1:] == current.shape[1:]
    )


def freeze_modules(net: nn.Module, modules: Sequence[str], batchnorm: bool) -> list[_BatchNorm]:
    """Fix the named submodules of ``net`` (and with ``batchnorm``, every BN of ``net``).

    Their parameters stop receiving gradients and their batch norms are put in eval mode (running
    statistics fixed). Returns those batch norms, which must stay in eval mode whenever the network
    is put back in training mode.
    """
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
    return list(norms.values())
