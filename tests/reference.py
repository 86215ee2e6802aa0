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
