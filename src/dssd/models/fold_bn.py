"""Batch-norm folding (DSSD paper, Eq. 1-4: 1.2-1.5x faster inference, same outputs): at
inference a BN is a per-channel affine map, merged into the conv it follows as
``w' = w * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
Pairs are read from each module's ``forward`` (``torch.fx``, one level deep) and folded only when
provably equivalent: the BN is called once, on the conv's output alone, which nothing else uses,
and neither module nor the conv's parameters are shared, hooked or read elsewhere."""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights


class _OneLevelTracer(fx.Tracer):
    """Traces only the root's ``forward``: every submodule call becomes a ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Return an eval-mode deep copy of ``net`` (same class, attributes and buffers) with every
    foldable conv -> BN pair folded: the conv gets a bias, the BN becomes ``nn.Identity``."""
    folded = copy.deepcopy(net).eval()
    # a shared conv (or conv weight) is used elsewhere too, a shared BN on other inputs; a hook
    # would observe the input or output that folding changes
    uses = Counter(id(m) for _, m in folded.named_modules(remove_duplicate=False))
    uses.update(id(p) for _, p in folded.named_parameters(remove_duplicate=False))
    for module in list(folded.modules()):
        for conv_name, bn_name in _conv_bn_pairs(module):
            conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
            shared = any(uses[id(x)] > 1 for x in (conv, bn, *conv.parameters()))
            if shared or any(m._forward_hooks or m._forward_pre_hooks for m in (conv, bn)):
                continue
            _fold_into_conv(conv, bn)
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(module.get_submodule(parent_name), attr, nn.Identity())
    return folded


def count_batchnorms(net: nn.Module) -> int:
    """Number of batch-norm modules (of any dimensionality) in ``net``."""
    return sum(isinstance(m, _BatchNorm) for m in net.modules())


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Qualified names (relative to ``module``) of the conv -> BN pairs its ``forward`` calls."""
    if next(module.children(), None) is None:
        return []
    try:
        graph = _OneLevelTracer().trace(module)
    except Exception:  # data-dependent control flow, no forward (ModuleList), ...: prove nothing
        return []
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    read = [node.target for node in graph.nodes if node.op == "get_attr"]

    def used_once(name: str) -> bool:
        return calls[name] == 1 and not any(t == name or t.startswith(f"{name}.") for t in read)

    pairs = []
    for bn_node in graph.nodes:
        if bn_node.op != "call_module" or len(bn_node.args) != 1 or bn_node.kwargs:
            continue
        conv_node = bn_node.args[0]
        if not isinstance(conv_node, fx.Node) or conv_node.op != "call_module":
            continue
        bn, conv = module.get_submodule(bn_node.target), module.get_submodule(conv_node.target)
        if (
            type(bn) is nn.BatchNorm2d  # exact types: a subclass may override forward
            and bn.running_mean is not None
            and bn.running_var is not None
            and type(conv) in (nn.Conv2d, nn.ConvTranspose2d)
            and len(conv_node.users) == 1
            and used_once(bn_node.target)
            and used_once(conv_node.target)
        ):
            pairs.append((conv_node.target, bn_node.target))
    return pairs


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` with torch's ``fuse_conv_bn_weights`` in float64, a
    transposed conv's weight in a conv's layout (``transpose=True`` mishandles grouped ones)."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    weight = _swap_in_out(conv.weight.double(), conv.groups) if transposed else conv.weight.double()
    mean, var, gamma, beta = map(_double, (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    weight, bias = fuse_conv_bn_weights(weight, _double(conv.bias), mean, var, bn.eps, gamma, beta)
    conv.weight.copy_(_swap_in_out(weight, conv.groups) if transposed else weight)
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias)


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.double()


def _swap_in_out(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed conv's weight ``[in, out / groups, kh, kw]`` in a conv's layout
    ``[out, in / groups, kh, kw]``, and back (the rearrangement inverts itself)."""
    return weight.unflatten(0, (groups, -1)).transpose(1, 2).flatten(0, 1)
