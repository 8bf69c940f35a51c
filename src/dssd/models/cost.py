"""What a network costs per image: multiply-accumulates, counted by torch's FlopCounterMode."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def gmac(net: nn.Module) -> float:
    """Multiply-accumulates of one forward pass of a detector (``net.image_size``) on one image,
    in billions, in eval mode; the network's mode is restored afterwards."""
    parameter = next(net.parameters())
    x = torch.zeros(1, 3, net.image_size, net.image_size, device=parameter.device)
    was_training = net.training
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            net.eval()(x.to(parameter.dtype))
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 2e9
