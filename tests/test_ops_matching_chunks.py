"""``dssd.ops.match`` on a CPU matches a few images at a time (the chunk trims the padding
columns): the result is the whole batch's, whatever the chunk size."""

from __future__ import annotations

import pytest
import torch

import dssd.ops.matching as matching
from dssd.models.default_boxes import DefaultBoxes
from dssd.ops import match, pad_targets


def test_chunked_matching_equals_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    priors = DefaultBoxes([0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05])([16, 8, 4, 3, 2, 1])
    g = torch.Generator().manual_seed(4)
    targets = []
    for n in [3, 10, 0, 1, 7, 2, 5]:  # different counts, so chunks carry padding; one empty image
        wh = 0.05 + 0.75 * torch.rand(n, 2, generator=g)
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        labels = torch.randint(1, 21, (n,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
    gt_boxes, gt_labels = pad_targets(targets)
    monkeypatch.setattr(matching, "_CHUNK_ELEMENTS", 1 << 40)
    whole = match(priors, gt_boxes, gt_labels)
    monkeypatch.setattr(matching, "_CHUNK_ELEMENTS", 1)
    chunked = match(priors, gt_boxes, gt_labels)
    assert (whole[1] > 0).sum() > 0
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
