"""BigGAN and SPADE generator blocks (models/gan/biggan.py, spade.py): shapes, the fused path equals the reference
path with the same weights, and the tiny SPADE example's loss goes down."""
import copy

import torch

from models.gan.biggan import build_biggan_block
from models.gan.spade import build_spade_generator, train_example


def _ref_copy(m):
    r = copy.deepcopy(m)
    for mod in r.modules():
        if hasattr(mod, "impl"):
            mod.impl = "reference"
    return r


def test_biggan_block_matches_reference():
    torch.manual_seed(0)
    blk = build_biggan_block(8, 4, num_classes=5, impl="cpu")
    with torch.no_grad():
        for bn in (blk.bn1, blk.bn2):
            bn.gain_embed.weight.normal_(0, 0.3)
            bn.bias_embed.weight.normal_(0, 0.3)
    ref = _ref_copy(blk)
    x, y = torch.randn(3, 8, 6, 6, requires_grad=True), torch.tensor([0, 4, 2])
    out = blk(x, y)
    assert out.shape == (3, 4, 12, 12)
    out_r = ref(x, y)
    torch.testing.assert_close(out, out_r, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(out)
    gx = torch.autograd.grad((out * g).sum(), x)[0]
    gr = torch.autograd.grad((out_r * g).sum(), x)[0]
    torch.testing.assert_close(gx, gr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(blk.bn1.running_var, ref.bn1.running_var)


def test_spade_generator_matches_reference_and_trains():
    torch.manual_seed(0)
    g = build_spade_generator(4, size=16, ch=8, n_up=2, hidden=8, impl="cpu")
    seg = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 16, 16)), 4).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(g(seg), _ref_copy(g)(seg), rtol=1e-4, atol=1e-4)
    losses = train_example(steps=12, batch=4, label_nc=4, size=16, impl="cpu")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
