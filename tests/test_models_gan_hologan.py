"""HoloGAN-style generator (models/gan/hologan.py): the 5-D fused AdaIN on its feature volume (auto path against the
reference path) and pose-dependent synthetic views. Training (--arch hologan: a few steps with finite losses that
move, step 0 against the reference path, bit-exact resume) runs in tests/test_models_gan.py's per-arch tests."""
import torch

import vkernels
from models.gan.hologan import HoloGANGenerator, random_poses, synthetic_views


def test_volume_adain_is_5d_and_matches_reference():
    torch.manual_seed(0)
    G = HoloGANGenerator(z_dim=8, ch=8, res=16, vol=8)
    shapes = []
    orig = vkernels.nn.AdaIN.forward

    def spy(self, x, style):
        shapes.append(tuple(x.shape))
        return orig(self, x, style)

    z = torch.randn(2, 8)
    pose = random_poses(2, torch.Generator().manual_seed(1))
    try:
        vkernels.nn.AdaIN.forward = spy
        y = G(z, *pose)
    finally:
        vkernels.nn.AdaIN.forward = orig
    assert y.shape == (2, 3, 16, 16) and torch.isfinite(y).all()
    assert any(len(s) == 5 for s in shapes) and any(len(s) == 4 for s in shapes)
    for m in G.modules():
        if isinstance(m, vkernels.nn.AdaIN):
            m.impl = "reference"
    torch.testing.assert_close(G(z, *pose), y, rtol=1e-4, atol=1e-4)


def test_synthetic_views_depend_on_pose():
    a = synthetic_views(2, 16, torch.Generator().manual_seed(3), poses=(torch.zeros(2), torch.zeros(2), torch.ones(2)))
    b = synthetic_views(2, 16, torch.Generator().manual_seed(3),
                        poses=(torch.full((2,), 1.5), torch.zeros(2), torch.ones(2)))
    assert a.shape == (2, 3, 16, 16) and a.abs().max() <= 1
    assert (a - b).abs().max() > 0.1  # the shapes are not rotation invariant
