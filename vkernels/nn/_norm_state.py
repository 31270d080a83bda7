"""The running-statistics state the norm layers share (UpsampleNormAct, AdaIN, ConditionalBatchNorm2d, SPADE):
nn.BatchNorm2d's buffers and train/eval behaviour.

Not a layer module: it exports nothing (vkernels.nn imports every module of the package and copies its __all__).
"""
from __future__ import annotations

import torch

__all__: list[str] = []


class NormState(torch.nn.Module):
    """Running statistics and train/eval behaviour of nn.BatchNorm2d (momentum=None: cumulative average)."""

    def _init_state(self, num_features, norm, track_running_stats, momentum, eps, device, dtype):
        self.num_features, self.norm, self.momentum, self.eps = num_features, norm, momentum, eps
        self.track_running_stats = track_running_stats and norm == "batch"
        if self.track_running_stats:
            f = dict(device=device, dtype=torch.float32 if dtype in (None, torch.float16, torch.bfloat16) else dtype)
            self.register_buffer("running_mean", torch.zeros(num_features, **f))
            self.register_buffer("running_var", torch.ones(num_features, **f))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def _norm_args(self):
        """(running_mean, running_var, training, momentum) as nn.BatchNorm2d passes them to F.batch_norm."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or not self.track_running_stats
        use_running = not self.training or self.track_running_stats
        rm = self.running_mean if use_running else None
        rv = self.running_var if use_running else None
        return rm, rv, bn_training, momentum
