"""models/_common.py: the pieces every training entry point relies on (checkpoints, resume RNG, data, PNG grids)."""
import argparse
import struct
import zlib

import pytest
import torch

from models import _common as C


def test_checkpoint_is_atomic_and_roundtrips(tmp_path):
    path = tmp_path / "ck" / "checkpoint.pt"
    C.save_checkpoint(path, {"w": torch.arange(5.0), "step": 3})
    C.save_checkpoint(path, {"w": torch.arange(6.0), "step": 4})  # overwrite in place
    got = C.load_checkpoint(path)
    assert got["step"] == 4 and torch.equal(got["w"], torch.arange(6.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]  # no temp files left behind
    assert C.load_checkpoint(tmp_path / "missing.pt") is None


def test_rng_state_resumes_the_same_stream():
    C.seed_everything(123)
    state = C.rng_state()
    a = (torch.rand(4), torch.randn(3))
    torch.rand(100)  # move on
    C.set_rng_state(state)
    b = (torch.rand(4), torch.randn(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["synthetic:3", "digits", "faces"])
def test_load_images(name):
    pytest.importorskip({"digits": "sklearn", "faces": "skimage"}.get(name, "torch"))
    x, y = C.load_images(name, size=16, channels=3)
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
    assert -1 <= x.min() < x.max() <= 1
    assert y is None or (y.dtype == torch.int64 and y.shape == x.shape[:1])
    assert x.std() > 0.1  # real content, not a constant


def test_png_grid_is_a_valid_png(tmp_path):
    x = torch.rand(5, 3, 7, 9) * 2 - 1
    path = tmp_path / "g.png"
    C.save_image_grid(x, path, nrow=3)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (3 * (9 + 2) + 2, 2 * (7 + 2) + 2)
    # Decode the single IDAT chunk and compare one image's pixels with the input.
    n = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + n])
    rows = [raw[r * (1 + 3 * w) + 1:(r + 1) * (1 + 3 * w)] for r in range(h)]
    img = torch.tensor([list(r) for r in rows], dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
    expect = x[4].add(1).mul(127.5).round().to(torch.uint8)  # 5th image: row 1, column 1
    assert torch.equal(img[:, 2 + 9:2 + 9 + 7, 2 + 11:2 + 11 + 9], expect)


def test_setup_single_process_sets_impl(tmp_path):
    import vkernels
    args = C.add_common_args(argparse.ArgumentParser()).parse_args(["--impl", "reference", "--out", str(tmp_path)])
    run = C.setup(args)
    try:
        assert (run.world, run.rank, run.is_main, run.device.type) == (1, 0, True, "cpu")
        x = torch.randn(3, 4)
        assert vkernels.resolve_impl("bias_act", x) == "reference"
    finally:
        vkernels.set_impl("auto")


def test_progress_prints_steps_rate_and_values_when_not_a_terminal(capsys):
    """Logs (no terminal): one plain line every `every` steps and at the end, with step/total of the whole run (a
    resumed run included), time per step, ETA and the values passed."""
    bar = C.Progress(7, start=2, desc="gan/stylegan2", every=2)
    for step in range(3, 8):
        bar.update(step, loss_g=1.23456, acc=0.5)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split()[1] for ln in lines] == ["4/7", "6/7", "7/7"], lines
    assert all(ln.startswith("gan/stylegan2 ") and "s/step" in ln and "loss_g=1.235 acc=0.5" in ln for ln in lines)
