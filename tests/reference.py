"""The oracle: a NumPy float64 transcription of AdamW, step by step, written from the papers.

Kingma & Ba (2015), Algorithm 1 and §2 ("epsilon hat" form); Loshchilov & Hutter (2019),
Algorithm 2 (decoupled weight decay with the schedule multiplier); Reddi et al. (2018) AMSGrad
with the maximum over the raw second moment as torch and Keras implement it; Dozat (2016)
Nesterov momentum in the form optax uses. Nothing here imports adamw_jax: parameters are a flat
``dict`` of float64 arrays, hyperparameters are Python floats or functions of the 0-based step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Params = dict[str, np.ndarray]
Hyper = float | Callable[[int], float]


def _at(value: Hyper, step: int) -> float:
    return float(value(step)) if callable(value) else float(value)


def adamw_trajectory(
    params: Params,
    grads: Sequence[Params],
    *,
    learning_rate: Hyper = 1e-3,
    b1: Hyper = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: Hyper = 0.0,
    weight_decay_mode: str = "coupled",
    decay_mask: dict[str, bool] | None = None,
    peak_learning_rate: float | None = None,
    eps_mode: str = "adam",
    amsgrad: bool = False,
    nesterov: bool = False,
    maximize: bool = False,
    bias_correction: bool = True,
) -> list[Params]:
    """The parameters after each step of AdamW on the gradient stream ``grads``."""
    theta = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    v_max = {k: np.zeros_like(x) for k, x in theta.items()}
    out = []
    for index, grad in enumerate(grads):
        t = index + 1
        eta = _at(learning_rate, index)
        beta1 = _at(b1, index)
        lam = _at(weight_decay, index)
        if bias_correction:
            c1, c2, c1_next = 1 - beta1**t, 1 - b2**t, 1 - beta1 ** (t + 1)
        else:
            c1 = c2 = c1_next = 1.0
        for k in theta:
            g = -np.asarray(grad[k], np.float64) if maximize else np.asarray(grad[k], np.float64)
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            second = v[k]
            if amsgrad:
                v_max[k] = np.maximum(v_max[k], v[k])
                second = v_max[k]
            if eps_mode == "hat":
                u = np.sqrt(c2) / c1 * m[k] / (np.sqrt(second + eps_root) + eps)
            else:
                m_hat = (beta1 * m[k] / c1_next + (1 - beta1) * g / c1) if nesterov else m[k] / c1
                u = m_hat / (np.sqrt(second / c2 + eps_root) + eps)
            decays = decay_mask is None or decay_mask[k]
            if weight_decay_mode == "coupled":
                theta[k] = theta[k] - eta * (u + (lam * theta[k] if decays else 0.0))
            else:
                peak = peak_learning_rate if peak_learning_rate is not None else eta
                multiplier = eta / peak
                theta[k] = theta[k] - eta * u - (multiplier * lam * theta[k] if decays else 0.0)
        out.append({k: x.copy() for k, x in theta.items()})
    return out


# Schedules and reduce-on-plateau: float64 formulas of the 0-based step ``t``, from the papers and
# the peers' documentation (optax, torch.optim.lr_scheduler, keras.optimizers.schedules).


def polynomial(t: int, init: float, end: float, power: float, steps: int, begin: int = 0) -> float:
    """``(init - end)·(1 - τ/T)^power + end``, ``τ`` the steps into the transition, clipped."""
    if steps == 0:
        return init if t < begin else end
    tau = min(max(t - begin, 0), steps)
    return (init - end) * (1 - tau / steps) ** power + end


def exponential(
    t: int,
    init: float,
    steps: int,
    rate: float,
    begin: int = 0,
    staircase: bool = False,
    end: float | None = None,
) -> float:
    """``init·rate^p``, ``p = max(t - begin, 0)/steps`` (floored if staircase), bounded by end."""
    p = max(t - begin, 0) / steps
    value = init * rate ** (np.floor(p) if staircase else p)
    if end is None:
        return value
    return max(value, end) if rate < 1 else min(value, end)


def cosine(t: int, init: float, steps: int, alpha: float = 0.0, exponent: float = 1.0) -> float:
    """``init·((1 - α)·(½(1 + cos(π·min(t, T)/T)))^exponent + α)``."""
    c = 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps))
    return init * ((1 - alpha) * c**exponent + alpha)


def warmup_cosine(
    t: int,
    init: float,
    peak: float,
    warmup: int,
    total: int,
    end: float = 0.0,
    exponent: float = 1.0,
) -> float:
    """Linear ``init -> peak`` over ``warmup`` steps, then cosine ``peak -> end`` until ``total``."""
    if t < warmup:
        return init + (peak - init) * t / warmup
    length = max(total - warmup, 1)
    c = 0.5 * (1 + np.cos(np.pi * min(t - warmup, length) / length))
    return end + (peak - end) * c**exponent


def step_decay(t: int, init: float, rate: float, size: int) -> float:
    return init * rate ** (t // size)


def inverse_time(t: int, init: float, rate: float, steps: int, staircase: bool = False) -> float:
    return init / (1 + rate * ((t // steps) if staircase else t / steps))


def inverse_sqrt(t: int, peak: float, warmup: int) -> float:
    return peak * t / warmup if t < warmup else peak * np.sqrt(warmup / t)


def piecewise_constant(t: int, init: float, scales: dict[int, float]) -> float:
    return init * float(np.prod([s for b, s in scales.items() if t >= b]))


def piecewise_interpolate(t: int, kind: str, init: float, scales: dict[int, float]) -> float:
    """Linear or cosine interpolation between the running products of the scales."""
    points = [(0, init)]
    for b, s in sorted(scales.items()):
        points.append((b, points[-1][1] * s))
    for (b0, v0), (b1, v1) in zip(points, points[1:]):
        if t < b1:
            f = (t - b0) / max(b1 - b0, 1)
            return (
                v0 + (v1 - v0) * f
                if kind == "linear"
                else v1 + (v0 - v1) * (1 + np.cos(np.pi * f)) / 2
            )
    return points[-1][1]


def warmup_stable_decay(
    t: int,
    peak: float,
    warmup: int,
    stable: int,
    decay: int,
    init: float = 0.0,
    end: float = 0.0,
    shape: str = "linear",
) -> float:
    if t < warmup:
        return init + (peak - init) * t / warmup
    f = min(max(t - warmup - stable, 0), decay) / decay
    left = {"linear": 1 - f, "cosine": (1 + np.cos(np.pi * f)) / 2, "1-sqrt": 1 - np.sqrt(f)}[shape]
    return end + (peak - end) * left


def joined(t: int, pieces: Sequence[Callable[[int], float]], boundaries: Sequence[int]) -> float:
    """``pieces[i](t - boundaries[i-1])`` on the interval of ``t``."""
    start = 0
    for piece, boundary in zip(pieces, boundaries):
        if t < boundary:
            return piece(t - start)
        start = boundary
    return pieces[-1](t - start)


def plateau_scales(
    values: Sequence[float],
    *,
    factor: float,
    patience: int,
    rtol: float,
    atol: float,
    cooldown: int,
    min_scale: float,
    accumulation_size: int = 1,
    eps: float = 0.0,
) -> list[float]:
    """The scale after each value, as torch ``ReduceLROnPlateau`` reduces the rate: a window
    mean that does not beat ``best·(1 - rtol) - atol`` is a bad epoch; more than ``patience`` of
    them in a row multiply the scale by ``factor`` (not below ``min_scale``, and only by more than
    ``eps``), then ``cooldown`` windows are ignored."""
    scale, best, bad, cool, window, out = 1.0, np.inf, 0, 0, [], []
    for value in values:
        window.append(value)
        if len(window) == accumulation_size:
            mean, window = float(np.mean(window)), []
            if mean < best * (1 - rtol) - atol:
                best, bad = mean, 0
            else:
                bad += 1
            if cool > 0:
                cool, bad = cool - 1, 0
            if bad > patience:
                reduced = max(scale * factor, min_scale)
                if scale - reduced > eps:
                    scale = reduced
                cool, bad = cooldown, 0
        out.append(scale)
    return out


def dynamic_code_value(byte: int, *, signed: bool) -> float:
    """The value of one 8-bit pattern of the dynamic tree code (Dettmers 2016, 2022), read bit
    by bit: [sign,] ``z`` zero bits (the decade ``10^-z``), a one bit, then ``f`` fraction bits
    ``k`` read as a linear position ``0.1 + 0.9·(k + 1)/2^f`` in the decade. All zeros is 0."""
    sign = -1.0 if signed and byte & 0x80 else 1.0
    bits = format(byte & 0x7F if signed else byte, "07b" if signed else "08b")
    if "1" not in bits:
        return 0.0
    zeros = bits.index("1")
    fraction = bits[zeros + 1 :]
    k = int(fraction, 2) if fraction else 0
    return sign * 10.0**-zeros * (0.1 + 0.9 * (k + 1) / 2 ** len(fraction))
