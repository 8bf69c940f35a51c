"""Default boxes (priors) of SSD/DSSD, in centre-size form normalised to the input size."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class DefaultBoxes:
    """The default boxes of square source maps: at each location ``(i, j)`` of source ``k`` (size
    ``f_k``, scale ``s_k``), centred at ``((j + 0.5) / f_k, (i + 0.5) / f_k)``, squares of side
    ``s_k`` and ``sqrt(s_k * s_{k+1})`` and per aspect ratio ``a`` (shared, or per source) a
    ``(s_k sqrt(a), s_k / sqrt(a))`` box and its flip; not clipped to the image, as in the paper."""

    def __init__(
        self,
        scales: Sequence[float],
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (1.6, 2.0, 3.0),
    ) -> None:
        self.scales = [float(s) for s in scales]
        num_sources = len(self.scales) - 1
        if aspect_ratios and isinstance(aspect_ratios[0], Sequence):
            if len(aspect_ratios) != num_sources:
                raise ValueError(
                    f"got aspect ratios for {len(aspect_ratios)} sources, expected {num_sources}"
                )
            self.aspect_ratios = [[float(a) for a in ratios] for ratios in aspect_ratios]
        else:
            self.aspect_ratios = [[float(a) for a in aspect_ratios]] * num_sources
        if any(a <= 0 or a == 1 for ratios in self.aspect_ratios for a in ratios):
            raise ValueError(f"aspect ratios must be positive and != 1, got {aspect_ratios}")

    @property
    def boxes_per_location(self) -> list[int]:
        """Number of boxes at each location, per source."""
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    def shapes(self, k: int) -> list[tuple[float, float]]:
        """Widths and heights of the boxes at one location of source ``k``."""
        s, s_next = self.scales[k], self.scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in map(math.sqrt, self.aspect_ratios[k]):
            shapes += [(s * r, s / r), (s / r, s * r)]
        return shapes

    def __call__(self, feature_sizes: Sequence[int]) -> Tensor:
        """Return ``[P, 4]`` boxes (cx, cy, w, h) ordered source, row, column, box."""
        if len(self.scales) != len(feature_sizes) + 1:
            raise ValueError(
                f"need {len(feature_sizes) + 1} scales for {len(feature_sizes)} source maps "
                f"(one more than the maps), got {len(self.scales)}"
            )
        priors = []
        for k, f in enumerate(feature_sizes):
            centres = (torch.arange(f, dtype=torch.float64) + 0.5) / f
            cy, cx = torch.meshgrid(centres, centres, indexing="ij")
            wh = torch.tensor(self.shapes(k), dtype=torch.float64).expand(f * f, -1, 2)
            xy = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand_as(wh)
            priors.append(torch.cat([xy, wh], dim=-1).reshape(-1, 4))
        return torch.cat(priors).float()
