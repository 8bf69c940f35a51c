"""`python -m dssd.tools.context_reach`: which default box predicts an object, and how far the
input gradient of what the heads read there reaches."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torchvision.ops import box_iou

from dssd.config import compose_train
from dssd.tools.context_reach import best_default_box, input_gradients, measure


@pytest.fixture(scope="module")
def nets() -> dict[str, torch.nn.Module]:
    """The CPU-sized Table 4 networks at random weights: SSD + PM(c) and DSSD (product)."""
    torch.manual_seed(0)
    built = {}
    for name, overrides in {"ssd": ["model=ssd_r18", "pm=c"], "dssd": ["model=dssd_r18"]}.items():
        built[name] = instantiate(compose_train(overrides).model.net).eval()
    return built


def test_best_default_box_is_the_cell_that_holds_the_best_prior(nets) -> None:
    """Against a plain search: the default boxes of the returned map and cell, rebuilt from
    their shapes and centre, hold the best IoU of all priors."""
    net = nets["ssd"]
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        xy = torch.rand(2, generator=generator) * 0.8
        box = torch.cat([xy, xy + 0.02 + torch.rand(2, generator=generator) * 0.3])
        level, row, col = best_default_box(net, box)
        size = net.feature_sizes[level]
        cx, cy = (col + 0.5) / size, (row + 0.5) / size
        cell = torch.tensor(
            [
                [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                for w, h in net.default_boxes.shapes(level)
            ]
        )
        priors = net.priors
        every = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
        best = box_iou(box[None], every).max()
        assert torch.isclose(box_iou(box[None], cell.float()).max(), best)


def test_a_point_gradient_gives_its_own_distance() -> None:
    """All the gradient on one pixel: both radii are that pixel's distance from the object's
    centre, and the share beyond is all or nothing by its distance from the box."""
    gradient = torch.zeros(100, 100)
    gradient[10, 80] = 3.0  # pixel centre (80.5, 10.5) in a 200 x 200 image: (161, 21)
    box = [40.0, 40.0, 60.0, 60.0]  # centre (50, 50)
    far = measure(gradient, box, (200, 200), distance=100.0, level=0)
    assert (
        far.radius_50 == far.radius_90 == pytest.approx(((161 - 50) ** 2 + (21 - 50) ** 2) ** 0.5)
    )
    assert far.share_beyond == 1.0  # (101 px from the box's right edge, 19 above its top)
    near = measure(gradient, box, (200, 200), distance=110.0, level=0)
    assert near.share_beyond == 0.0


def test_dssd_reaches_beyond_what_the_ssd_map_can_see(nets) -> None:
    """At the top-left cell of the finest map, SSD's gradient is exactly 0 in the far corner
    (beyond the stride-8 map's receptive field), DSSD's decoder brings the deepest maps there."""
    image = torch.randn(3, 193, 193, generator=torch.Generator().manual_seed(2))
    far_corner = (slice(150, None), slice(150, None))
    (ssd,) = input_gradients(nets["ssd"], image, [(0, 0, 0)])
    (dssd,) = input_gradients(nets["dssd"], image, [(0, 0, 0)])
    assert ssd.shape == dssd.shape == (193, 193)
    assert ssd[:20, :20].sum() > 0 and dssd[:20, :20].sum() > 0
    assert ssd[far_corner].abs().sum() == 0
    assert dssd[far_corner].abs().sum() > 0
    box = [0.0, 0.0, 8.0, 8.0]
    # several cells of one image on one forward pass: each as if computed alone (to rounding:
    # oneDNN may pick other kernels for the first passes than for later ones)
    both = input_gradients(nets["dssd"], image, [(0, 0, 0), (1, 3, 4), (0, 0, 0)])
    alone = [dssd, input_gradients(nets["dssd"], image, [(1, 3, 4)])[0], dssd]
    for shared, single in zip(both, alone, strict=True):
        torch.testing.assert_close(shared, single, rtol=1e-5, atol=1e-5 * float(single.max()))
    assert measure(dssd, box, (193, 193), 100, 0).share_beyond > 0
    assert measure(ssd, box, (193, 193), 100, 0).share_beyond == 0
