"""Learning-rate schedules counted in iterations, as the paper states them."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_multistep(
    optimizer: Optimizer,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0 / 3,
) -> LambdaLR:
    """Multiply the LR by ``gamma`` at each milestone, after a linear warm-up from
    ``warmup_factor`` to 1 over ``warmup_iters`` iterations (keeps a randomly initialised detector
    from diverging). Step it once per iteration."""
    milestones = sorted(milestones)

    def factor(step: int) -> float:
        decay = gamma ** bisect_right(milestones, step)
        if step < warmup_iters:
            alpha = step / warmup_iters
            return decay * (warmup_factor * (1 - alpha) + alpha)
        return decay

    return LambdaLR(optimizer, factor)
