"""spade_norm_act in plain PyTorch: parameter-free batch / instance norm, then SPADE's spatial modulation
norm(x) * (1 + gamma) + beta (Park et al. 2019, NVlabs/SPADE models/networks/normalization.py), then activation,
gain and clamp. The test oracle and the explicit fallback (impl="reference")."""
import torch.nn.functional as F

from vkernels.reference.upsample_norm_act import act_gain_clamp


def spade_norm_act(x, gamma, beta, norm="batch", running_mean=None, running_var=None, training=True, momentum=0.1,
                   eps=1e-5, act="lrelu", alpha=0.2, gain=1.0, clamp=None):
    if norm == "batch":
        u = F.batch_norm(x, running_mean, running_var, None, None, training, momentum, eps)
    else:
        u = F.instance_norm(x, eps=eps)
    return act_gain_clamp(u * (1 + gamma) + beta, act, alpha, gain, clamp).to(x.dtype)
