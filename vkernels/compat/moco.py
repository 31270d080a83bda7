"""facebookresearch/moco's `moco.builder.MoCo`, with the loss fused: vkernels.infonce_bank_loss instead of N x (1+K)
logits and a cross-entropy.

    # model = moco.builder.MoCo(models.__dict__[arch], dim, K, m, T, mlp)                    (theirs)
    model = vkernels.compat.moco.MoCo(models.__dict__[arch], dim, K, m, T, mlp)                # (ours)

    # their training loop:                    output, target = model(im_q=images[0], im_k=images[1])
    #                                         loss = criterion(output, target)
    #                                         acc1, acc5 = accuracy(output, target, topk=(1, 5))
    # becomes:                                loss, rank = model(im_q=images[0], im_k=images[1])
    #                                         acc1, acc5 = ((rank < k).float().mean() * 100 for k in (1, 5))

Same as theirs: the constructor (names, order, defaults), the encoders (built q then k, the MLP head replacement, k
initialised as a copy of q with requires_grad False) and so the same draws from torch's RNG; the buffers `queue`
(dim, K), unit columns, and `queue_ptr` (1,) int64, hence the state_dict (their checkpoints load with strict=True);
the momentum update, the shuffle-BN draws (torch.randperm on the CPU generator, broadcast from rank 0), the enqueue
(gathered keys written at queue_ptr, K % batch == 0 asserted); the helper methods' names. The loss equals
`CrossEntropyLoss()(logits, zeros)` (mean over the batch) and is computed against the queue as it was before this
step's enqueue, as theirs.

Returns (loss, rank) instead of (logits, labels): rank_i counts the queue entries whose logit is strictly above the
positive's (0 = top-1), so top-k accuracy needs no logits.

Single process: theirs needs torch.distributed initialised (its shuffle gathers across processes and raises
otherwise) and CUDA (`.cuda()` calls). Ours runs as theirs does in a one-process group when torch.distributed is not
initialised (the shuffle is a permutation of the local batch, drawn the same way) and on any device.

Memory: no copy of the queue (theirs clones it every step, and builds N x (1 + K) logits). The loss reads the queue
in place as a (K, dim) transposed view, and its backward needs the queue as it was before this step's enqueue: the
forward keeps the N overwritten columns, and the backward swaps them in while the loss's gradient is computed and
the new keys back afterwards. If the queue changed in between (a second forward's enqueue before this backward,
e.g. two forwards then one backward; a load_state_dict), the backward raises; set `model.snapshot_queue = True` to
copy the queue per step as theirs does instead.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd import Variable

from vkernels.ops.infonce_bank_loss import infonce_bank_loss

__all__ = ["MoCo", "concat_all_gather"]


class MoCo(torch.nn.Module):
    """MoCo v1 / v2 (He et al., CVPR 2020; Chen et al. 2020): a query encoder, a momentum key encoder and a queue.

    Args:
        base_encoder: a callable `base_encoder(num_classes=dim)` returning a network whose last layer is `.fc`.
        dim: feature dimension. K: queue size (negatives). m: momentum of the key encoder. T: temperature.
        mlp: replace `fc` by Linear-ReLU-fc (MoCo v2).

    Attributes beyond theirs: snapshot_queue (False): copy the queue for the loss's backward each training step
    instead of swapping the overwritten columns back in during backward.
    """

    snapshot_queue = False

    def __init__(self, base_encoder, dim=128, K=65536, m=0.999, T=0.07, mlp=False):
        super().__init__()
        self.K = K
        self.m = m
        self.T = T

        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:
            dim_mlp = self.encoder_q.fc.weight.shape[1]
            self.encoder_q.fc = torch.nn.Sequential(
                torch.nn.Linear(dim_mlp, dim_mlp), torch.nn.ReLU(), self.encoder_q.fc)
            self.encoder_k.fc = torch.nn.Sequential(
                torch.nn.Linear(dim_mlp, dim_mlp), torch.nn.ReLU(), self.encoder_k.fc)
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data.copy_(param_q.data)
            param_k.requires_grad = False

        self.register_buffer("queue", torch.nn.functional.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = concat_all_gather(keys)
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0  # as theirs: the batch tiles the queue
        self.queue[:, ptr:ptr + batch_size] = keys.T
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x):
        """A random permutation of the global batch, this process's share of it, and the inverse permutation."""
        batch_size_this = x.shape[0]
        x_gather = concat_all_gather(x)
        num_procs = x_gather.shape[0] // batch_size_this
        idx_shuffle = torch.randperm(x_gather.shape[0]).to(x.device)
        if _world_size() > 1:
            dist.broadcast(idx_shuffle, src=0)
        idx_unshuffle = torch.argsort(idx_shuffle)
        idx_this = idx_shuffle.view(num_procs, -1)[_rank()]
        return x_gather[idx_this], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x, idx_unshuffle):
        batch_size_this = x.shape[0]
        x_gather = concat_all_gather(x)
        num_procs = x_gather.shape[0] // batch_size_this
        idx_this = idx_unshuffle.view(num_procs, -1)[_rank()]
        return x_gather[idx_this]

    def forward(self, im_q, im_k):
        """im_q, im_k: two views of a batch -> (loss, rank): the mean InfoNCE loss (0-dim, differentiable) and (N,)
        int64 ranks of the positives among the 1 + K candidates (0 = top-1)."""
        q = torch.nn.functional.normalize(self.encoder_q(im_q), dim=1)

        with torch.no_grad():
            self._momentum_update_key_encoder()
            im_k, idx_unshuffle = self._batch_shuffle_ddp(im_k)
            k = torch.nn.functional.normalize(self.encoder_k(im_k), dim=1)
            k = self._batch_unshuffle_ddp(k, idx_unshuffle)

        training = torch.is_grad_enabled() and q.requires_grad
        swap = training and not self.snapshot_queue and self.queue.dtype == q.dtype
        if swap:  # .data: the enqueue below must not invalidate the bank the op saves; _swap_in_backward repairs it
            bank = self.queue.data.t()
        elif training:
            bank = self.queue.t().to(q.dtype, memory_format=torch.contiguous_format, copy=True)
        else:
            bank = self.queue.t().to(q.dtype)
        rows, rank = infonce_bank_loss(q, k, bank, self.T, reduction="none", return_rank=True)

        if swap:
            ptr, n_all = int(self.queue_ptr), k.shape[0] * _world_size()
            old = self.queue[:, ptr:ptr + n_all].clone()
        self._dequeue_and_enqueue(k)
        if swap:
            self._swap_in_backward(rows.grad_fn, slice(ptr, ptr + n_all), old)
        return rows.mean(), rank

    def _swap_in_backward(self, node, cols, old):
        """While `node` (the loss op) and the nodes after it run backward, queue[:, cols] holds `old` again."""
        version = self.queue._version

        def swap_old_in(grad_outputs):
            if self.queue._version != version:
                raise RuntimeError(
                    "MoCo (vkernels.compat): the queue changed between a forward and its backward (another "
                    "forward's enqueue or a load_state_dict came first); the loss's backward needs the queue as it "
                    "was. Run backward before the next forward, or set model.snapshot_queue = True to copy the "
                    "queue per step as the original MoCo does.")
            new = self.queue.data[:, cols].clone()
            self.queue.data[:, cols] = old  # .data: no version bump, so a later check still sees the enqueue's

            def swap_new_back():
                self.queue.data[:, cols] = new
            Variable._execution_engine.queue_callback(swap_new_back)  # once this backward pass is over

        node.register_prehook(swap_old_in)


def _world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def concat_all_gather(tensor):
    """The tensors of every process concatenated along dim 0 (no gradient); the tensor itself in one process."""
    if _world_size() == 1:
        return tensor
    tensors_gather = [torch.ones_like(tensor) for _ in range(_world_size())]
    dist.all_gather(tensors_gather, tensor, async_op=False)
    return torch.cat(tensors_gather, dim=0)
