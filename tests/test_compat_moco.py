"""vkernels.compat.moco.MoCo: facebookresearch/moco's builder with the loss fused (loss and rank, no logits).

The CI tests need no checkout; `TestRealCheckout` runs only with VKERNELS_MOCO=<checkout> (its last non-empty commit)
and trains their moco/builder.py and ours side by side."""
import inspect

import pytest
import torch
import torch.nn.functional as F

from _anchors import anchor_module, report
from vkernels.compat.moco import MoCo


class Tiny(torch.nn.Module):
    """A base encoder with BatchNorm (what the shuffle is for) and a final `fc`, called as base_encoder(num_classes)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def expected_step(model, im_q, im_k):
    """One MoCo step from the paper's Algorithm 1, on a copy: (loss, rank, queue after, key-encoder state after)."""
    m = model.m
    enc_k = Tiny(model.encoder_q.fc.out_features).to(im_q.dtype)
    enc_k.load_state_dict(model.encoder_k.state_dict())
    with torch.no_grad():
        for pk, pq in zip(enc_k.parameters(), model.encoder_q.parameters()):
            pk.copy_(pk * m + pq * (1 - m))
        k = F.normalize(enc_k(im_k), dim=1)  # BN statistics over the whole batch: the shuffle changes no value
    q = F.normalize(model.encoder_q(im_q), dim=1)
    queue = model.queue.clone()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / model.T
    loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
    rank = (logits[:, 1:] > logits[:, :1]).sum(1)
    ptr = int(model.queue_ptr)
    queue = queue.clone()
    queue[:, ptr:ptr + len(k)] = k.T
    return loss, rank, queue, enc_k.state_dict()


def test_signature():
    params = inspect.signature(MoCo.__init__).parameters
    assert [(p.name, p.default) for p in list(params.values())[1:]] == [
        ("base_encoder", inspect.Parameter.empty), ("dim", 128), ("K", 65536), ("m", 0.999), ("T", 0.07),
        ("mlp", False)]
    assert list(inspect.signature(MoCo.forward).parameters) == ["self", "im_q", "im_k"]


@pytest.mark.parametrize("mlp", [False, True])
def test_construction_draws_buffers_and_state_dict(mlp):
    torch.manual_seed(5)
    model = MoCo(Tiny, 16, 24, 0.9, 0.2, mlp)
    # Their construction order: encoder q, encoder k, (the two MLP heads), then the queue.
    torch.manual_seed(5)
    eq, ek = Tiny(16), Tiny(16)
    heads = [torch.nn.Linear(8, 8) for _ in range(2)] if mlp else []
    queue = F.normalize(torch.randn(16, 24), dim=0)
    assert model.queue.shape == (16, 24) and torch.equal(model.queue, queue)
    assert model.queue_ptr.shape == (1,) and model.queue_ptr.dtype == torch.long and int(model.queue_ptr) == 0
    assert torch.equal(model.encoder_q.conv.weight, eq.conv.weight)
    if mlp:
        assert isinstance(model.encoder_q.fc, torch.nn.Sequential) and len(model.encoder_q.fc) == 3
        assert torch.equal(model.encoder_q.fc[0].weight, heads[0].weight)
        assert torch.equal(model.encoder_q.fc[2].weight, eq.fc.weight)
    for pq, pk in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(pq, pk) and pq.requires_grad and not pk.requires_grad
    keys = list(model.state_dict())
    assert keys[:3] == ["queue", "queue_ptr", "encoder_q.conv.weight"]
    assert {k.split(".")[0] for k in keys} == {"encoder_q", "encoder_k", "queue", "queue_ptr"}
    assert (model.K, model.m, model.T) == (24, 0.9, 0.2)


def test_training_steps_match_the_definition():
    torch.manual_seed(0)
    model = MoCo(Tiny, 8, 12, 0.9, 0.2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):  # 4 steps of N = 4 wrap the K = 12 queue
        im_q, im_k = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
        loss_e, rank_e, queue_e, enc_k_e = expected_step(model, im_q, im_k)
        grads_e = torch.autograd.grad(loss_e, list(model.encoder_q.parameters()))
        loss, rank = model(im_q, im_k)
        assert loss.shape == () and rank.shape == (4,) and rank.dtype == torch.int64
        torch.testing.assert_close(loss, loss_e)
        assert torch.equal(rank, rank_e)
        torch.testing.assert_close(model.queue, queue_e)
        assert int(model.queue_ptr) == (step + 1) * 4 % 12
        for name, v in model.encoder_k.state_dict().items():
            torch.testing.assert_close(v, enc_k_e[name], msg=name)
        opt.zero_grad()
        loss.backward()
        for p, g in zip(model.encoder_q.parameters(), grads_e):
            torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(model.queue, queue_e)  # the backward's swap put this step's keys back
        opt.step()


@pytest.mark.parametrize("snapshot", [False, True])
def test_two_forwards_before_one_backward(snapshot):
    torch.manual_seed(2)
    model = MoCo(Tiny, 8, 16, 0.9, 0.2).double()
    model.snapshot_queue = snapshot
    x = [torch.randn(4, 3, 5, 5, dtype=torch.float64) for _ in range(4)]
    loss_a, _, _, _ = expected_step(model, x[0], x[1])
    grads_a = torch.autograd.grad(loss_a, list(model.encoder_q.parameters()))
    la, _ = model(x[0], x[1])
    lb, _ = model(x[2], x[3])
    if not snapshot:  # the first loss's columns were overwritten again: refused, with the way out named
        with pytest.raises(RuntimeError, match="snapshot_queue"):
            la.backward()
        return
    la.backward(retain_graph=True)
    for p, g in zip(model.encoder_q.parameters(), grads_a):
        torch.testing.assert_close(p.grad, g)
    lb.backward()


def test_no_grad_forward_reads_the_queue_and_still_enqueues():
    torch.manual_seed(1)
    model = MoCo(Tiny, 8, 8, 0.9, 0.2)
    im_q, im_k = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    loss_e, rank_e, queue_e, _ = expected_step(model, im_q, im_k)
    with torch.no_grad():
        loss, rank = model(im_q, im_k)
    torch.testing.assert_close(loss, loss_e.detach())
    assert torch.equal(rank, rank_e)
    torch.testing.assert_close(model.queue, queue_e.detach())


def test_queue_size_must_be_a_multiple_of_the_batch():
    model = MoCo(Tiny, 8, 10, 0.9, 0.2)
    with pytest.raises(AssertionError):
        model(torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5))


def test_group_of_one_equals_no_group(tmp_path):
    import torch.distributed as dist

    def run():
        torch.manual_seed(4)
        model = MoCo(Tiny, 8, 16, 0.9, 0.2).double()
        gen = torch.Generator().manual_seed(9)
        out = []
        for step in range(2):
            x = [torch.randn(4, 3, 5, 5, dtype=torch.float64, generator=gen) for _ in range(2)]
            torch.manual_seed(step)
            loss, rank = model(*x)
            loss.backward()
            out.append((loss.detach(), rank, model.queue.clone(), model.encoder_q.conv.weight.grad.clone()))
        return out

    alone = run()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        grouped = run()
    finally:
        dist.destroy_process_group()
    for a, b in zip(alone, grouped):
        for u, v in zip(a, b):
            assert torch.equal(u, v)


def train(model, dtype, steps, theirs=False):
    """`steps` SGD steps of N = 8 on fixed random views: per step (loss, rank, (top-1, top-5), queue, state)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    data = torch.Generator().manual_seed(11)
    record = []
    for step in range(steps):
        im_q = torch.randn(8, 3, 6, 6, dtype=dtype, generator=data)
        im_k = torch.randn(8, 3, 6, 6, dtype=dtype, generator=data)
        torch.manual_seed(100 + step)  # the shuffle's randperm
        if theirs:  # their loop: criterion(output, target), accuracy from the logits
            logits, labels = model(im_q=im_q, im_k=im_k)
            loss = torch.nn.CrossEntropyLoss()(logits, labels)
            rank = (logits[:, 1:] > logits[:, :1]).sum(1)
            _, top5 = logits.topk(5, 1)
            acc = (float((top5[:, :1] == 0).any(1).float().mean()), float((top5 == 0).any(1).float().mean()))
        else:  # ours: the loss directly, accuracy from the ranks
            loss, rank = model(im_q=im_q, im_k=im_k)
            acc = tuple(float((rank < k).float().mean()) for k in (1, 5))
        opt.zero_grad()
        loss.backward()
        opt.step()
        record.append((loss.detach(), rank, acc, model.queue.clone(),
                       {k: v.clone() for k, v in model.state_dict().items()}))
    return record


class TestRealCheckout:
    """Their moco/builder.py against ours (VKERNELS_MOCO=<checkout at the commit before the empty tree>)."""

    @pytest.fixture
    def theirs(self, monkeypatch):
        # Theirs needs CUDA (.cuda() calls): the identity on this CPU-only run.
        builder = anchor_module("VKERNELS_MOCO", "moco/builder.py", "_their_moco_builder")
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
        return builder

    @pytest.fixture
    def group(self, tmp_path):
        """Theirs needs a process group (its shuffle gathers): one gloo process."""
        import torch.distributed as dist

        def start():
            dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
        yield start
        if dist.is_initialized():
            dist.destroy_process_group()

    @pytest.mark.parametrize("mlp", [False, True])
    def test_init_and_state_dict_both_ways(self, theirs, mlp):
        torch.manual_seed(3)
        t = theirs.MoCo(Tiny, 16, 32, 0.99, 0.1, mlp)
        torch.manual_seed(3)
        o = MoCo(Tiny, 16, 32, 0.99, 0.1, mlp)
        st, so = t.state_dict(), o.state_dict()
        assert list(st) == list(so) and all(torch.equal(st[k], so[k]) for k in st)
        assert all(p.requires_grad == q.requires_grad for p, q in zip(t.parameters(), o.parameters()))
        o.load_state_dict(st, strict=True)
        t.load_state_dict(so, strict=True)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_training_steps(self, theirs, group, dtype):
        def build(cls):
            torch.manual_seed(0)
            return cls(Tiny, 16, 64, 0.9, 0.07).to(dtype)

        runs = {"ours, one process": train(build(MoCo), dtype, 12)}  # 12 steps of N = 8 wrap K = 64 once
        group()
        runs["theirs"] = train(build(theirs.MoCo), dtype, 12, theirs=True)
        runs["ours, gloo group of 1"] = train(build(MoCo), dtype, 12)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        for name in ("ours, one process", "ours, gloo group of 1"):
            worst = {"loss": 0.0, "queue": 0.0, "params": 0.0}
            for (lt, rt, at, qt, st), (lo, ro, ao, qo, so) in zip(runs["theirs"], runs[name]):
                assert torch.equal(rt, ro) and at == ao
                assert torch.equal(st["queue_ptr"], so["queue_ptr"])
                worst["loss"] = max(worst["loss"], float((lt - lo).abs()))
                worst["queue"] = max(worst["queue"], float((qt - qo).abs().max()))
                worst["params"] = max(worst["params"], max(float((st[k] - so[k]).abs().max()) for k in st
                                                           if st[k].is_floating_point()))
            for k, v in worst.items():
                report(f"MoCo {dtype} 12 steps vs {name}: {k}", v)
            assert all(v < tol for v in worst.values()), (name, worst)
