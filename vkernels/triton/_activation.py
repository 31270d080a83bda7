"""The activations of bias_act's convention (csrc/ops/bias_act_math.h) as @triton.jit helpers, shared by every Triton
kernel that ends in an activation (bias_act, modulated_conv2d's epilogue, upsample_norm_act, spade_norm_act).

Only tl.exp / tl.log are used for transcendentals (libdevice does not run in the Triton interpreter, where CI tests
this code), with Kahan's accurate forms of expm1 and log1p. On a GPU, fp32 tl.exp is ex2.approx and `/` div.full (a
few ulp; tl.log stays accurate): fine for an elementwise activation, whose fp32 tests allow 2e-5 relative to the
output's magnitude, so no correctly rounded forms here.
"""
import triton
import triton.language as tl

ACT_IDS = {a: i for i, a in enumerate(["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus",
                                       "swish"])}
# tl.constexpr: the GPU compiler rejects plain Python float globals inside @triton.jit code (the interpreter does not).
SELU_L = tl.constexpr(1.0507009873554804934193349852946)
SELU_A = tl.constexpr(1.6732632423543772848170429916717)


@triton.jit
def _expm1(z):
    u = tl.exp(z)
    um1 = u - 1.0
    # (u - 1) * z / log(u) cancels the rounding of u (Kahan); exact at u == 1 and at underflow.
    return tl.where(u == 1.0, z, tl.where(um1 == -1.0, um1, um1 * z / tl.log(u)))


@triton.jit
def _log1p(w):
    u = 1.0 + w
    return tl.where(u == 1.0, w, tl.log(u) * w / (u - 1.0))


@triton.jit
def _tanh(z):
    e = _expm1(-2.0 * tl.abs(z))
    t = -e / (2.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def act(z, alpha, ACT: tl.constexpr):
    if ACT == 0:
        r = z
    elif ACT == 1:
        r = tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        r = tl.where(z < 0, z * alpha, z)
    elif ACT == 3:
        r = _tanh(z)
    elif ACT == 4:
        r = _sigmoid(z)
    elif ACT == 5:
        r = tl.where(z < 0, _expm1(z), z)
    elif ACT == 6:
        r = SELU_L * tl.where(z < 0, SELU_A * _expm1(z), z)
    elif ACT == 7:
        r = tl.where(z > 20.0, z, _log1p(tl.exp(z)))
    else:
        r = z * _sigmoid(z)
    return r


@triton.jit
def grad_y(ya, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    # f'(ya) (ORDER 1) or d f'(ya)/d ya (ORDER 2), with ya the unscaled activation output.
    if ORDER == 1:
        if ACT == 0:
            r = ya * 0.0 + 1.0
        elif ACT == 1:
            r = tl.where(ya > 0, 1.0, 0.0)
        elif ACT == 2:
            r = tl.where(ya > 0, 1.0, alpha)
        elif ACT == 3:
            r = 1.0 - ya * ya
        elif ACT == 4:
            r = ya * (1.0 - ya)
        elif ACT == 5:
            r = tl.where(ya <= 0, ya + 1.0, 1.0)
        elif ACT == 6:
            r = tl.where(ya <= 0, ya + SELU_L * SELU_A, SELU_L)
        else:
            r = -_expm1(-ya)
    else:
        if ACT == 3:
            r = -2.0 * ya
        elif ACT == 4:
            r = 1.0 - 2.0 * ya
        elif ACT == 5 or ACT == 6:
            r = tl.where(ya <= 0, 1.0, 0.0)
        elif ACT == 7:
            r = tl.exp(-ya)
        else:
            r = ya * 0.0
    return r


@triton.jit
def grad_x(z, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    # f'(z) (ORDER 1) or f''(z) (ORDER 2).
    if ACT == 0:
        r = z * 0.0 + (1.0 if ORDER == 1 else 0.0)
    elif ACT == 1:
        r = tl.where(z > 0, 1.0, 0.0) if ORDER == 1 else z * 0.0
    elif ACT == 2:
        r = tl.where(z > 0, 1.0, alpha) if ORDER == 1 else z * 0.0
    elif ACT == 3:
        t = _tanh(z)
        r = (1.0 - t * t) if ORDER == 1 else -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        r = s * (1.0 - s) if ORDER == 1 else s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:
        r = tl.where(z <= 0, tl.exp(z), 1.0 if ORDER == 1 else 0.0)
    elif ACT == 6:
        r = tl.where(z <= 0, SELU_L * SELU_A * tl.exp(z), SELU_L if ORDER == 1 else 0.0)
    elif ACT == 7:
        s = _sigmoid(z)
        r = tl.where(z > 20.0, 1.0 if ORDER == 1 else 0.0, s if ORDER == 1 else s * (1.0 - s))
    else:
        s = _sigmoid(z)
        r = s + z * s * (1.0 - s) if ORDER == 1 else s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    return r


@triton.jit
def act_gain_clamp(z, alpha, gain, clamp, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """act(z) * gain, clamped to [-clamp, clamp] when HAS_CLAMP: the forward of every fused activation."""
    r = act(z, alpha, ACT) * gain
    if HAS_CLAMP:
        r = tl.where(r < -clamp, -clamp, tl.where(r > clamp, clamp, r))
    return r


@triton.jit
def act_gain_clamp_grad(dy, z, alpha, gain, clamp, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, ORDER: tl.constexpr):
    """dy * gain * act'(z) (ORDER 1) or dy * gain * act''(z) (ORDER 2): the gradient of act_gain_clamp through its
    input z, zero where the output was clamped (as bias_act_grad's x-ref mode)."""
    r = dy * gain * grad_x(z, alpha, ACT, ORDER)
    if HAS_CLAMP:
        r = tl.where(tl.abs(act(z, alpha, ACT) * gain) < clamp, r, 0.0)
    return r
