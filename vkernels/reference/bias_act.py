"""bias_act in plain PyTorch: the test oracle and the explicit fallback (impl="reference")."""
import math

import torch
import torch.nn.functional as F

# name -> (function of (z, alpha), default alpha, default gain), as in StyleGAN's bias_act.
ACTIVATIONS = {
    "linear": (lambda z, a: z, 0.0, 1.0),
    "relu": (lambda z, a: torch.relu(z), 0.0, math.sqrt(2)),
    "lrelu": (lambda z, a: F.leaky_relu(z, a), 0.2, math.sqrt(2)),
    "tanh": (lambda z, a: torch.tanh(z), 0.0, 1.0),
    "sigmoid": (lambda z, a: torch.sigmoid(z), 0.0, 1.0),
    "elu": (lambda z, a: F.elu(z), 0.0, 1.0),
    "selu": (lambda z, a: F.selu(z), 0.0, 1.0),
    "softplus": (lambda z, a: F.softplus(z), 0.0, 1.0),
    "swish": (lambda z, a: F.silu(z), 0.0, math.sqrt(2)),
}


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """y = clamp(act(x + b) * gain, -clamp, clamp), b broadcast along `dim`; see vkernels.bias_act."""
    fn, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    x = fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x
