"""Clipping: hand-computed cases, properties, and the real torch and Keras clipping side by side."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import adamw_jax as aw  # noqa: E402

# Float32 ulp-level agreement: the norm is a float32 sum whose order differs between libraries
# (a few ulps), then one multiply and one divide; 4e-6 is ~30 ulps, far below any formula error
# (a missing eps, a squared norm, a per-tensor instead of global norm all change results > 1e-3).
PEER_RTOL = 4e-6


def clipped(transform, grads):
    """The transform applied once, jitted."""
    return jax.jit(lambda g: transform.update(g, transform.init(g))[0])(grads)


@functools.partial(jax.jit, static_argnums=0)
def clip_with_traced_threshold(factory, grads, threshold):
    """The transform built inside ``jit`` from a traced threshold: one compilation per factory."""
    transform = factory(threshold)
    return transform.update(grads, transform.init(grads))[0]


def random_grads(seed, scale):
    rng = np.random.default_rng(seed)
    shapes = {"w": (6, 5), "b": (5,), "s": ()}
    return {k: (rng.normal(size=s) * scale).astype(np.float32) for k, s in shapes.items()}


def test_hand_computed_cases():
    out = clipped(aw.clip_by_value(1.0), {"g": jnp.array([-3.0, 0.5, 2.0])})
    np.testing.assert_array_equal(out["g"], [-1.0, 0.5, 1.0])
    # ‖(3, 4)‖ = 5 → scaled by 1/5; ‖(0.3, 0.4)‖ = 0.5 <= 1 → unchanged, bit for bit.
    out = clipped(aw.clip_by_norm(1.0), {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])})
    np.testing.assert_allclose(out["a"], [0.6, 0.8], rtol=1e-7)
    np.testing.assert_array_equal(out["b"], np.float32([0.3, 0.4]))
    # Global: ‖(3, 4)‖ = 5 over both leaves, c = 2.5 → every leaf halved.
    out = clipped(aw.clip_by_global_norm(2.5), {"a": jnp.array([3.0]), "b": jnp.array([4.0])})
    np.testing.assert_allclose(jnp.concatenate([out["a"], out["b"]]), [1.5, 2.0], rtol=1e-7)
    # torch's eps: c / (‖G‖ + 1e-6).
    out = clipped(aw.clip_by_global_norm(2.5, eps=1e-6), {"a": jnp.array([3.0, 4.0])})
    np.testing.assert_allclose(out["a"], np.array([3.0, 4.0]) * 2.5 / (5 + 1e-6), rtol=1e-7)


@pytest.mark.parametrize("transform", [aw.clip_by_value(1.0), aw.clip_by_norm(1.0),
                                       aw.clip_by_global_norm(1.0)])
def test_zero_gradient_stays_zero_without_nan(transform):
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        out = clipped(transform, {"w": jnp.zeros((3, 2), dtype)})
        assert out["w"].dtype == dtype
        np.testing.assert_array_equal(np.asarray(out["w"], np.float32), 0.0)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_norms_are_float32_for_low_precision(dtype):
    """300² overflows float16 and 1000 bfloat16 squares of 0.01 lose their sum in bfloat16."""
    big = {"w": jnp.full((4,), 300.0, dtype)}
    out = clipped(aw.clip_by_norm(60.0), big)
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 30.0, rtol=4e-3)  # 1 ulp of 30
    small = {"w": jnp.full((1000,), 0.01, dtype)}
    norm = float(jax.jit(aw.clipping.global_norm)(small))
    expected = float(np.sqrt(1000) * np.float32(jnp.asarray(0.01, dtype)))
    np.testing.assert_allclose(norm, expected, rtol=1e-6)
    out = clipped(aw.clip_by_global_norm(0.1), small)
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 0.1 / np.sqrt(1000), rtol=4e-3)


def test_nonfinite_global_norm_makes_every_gradient_nan():
    out = clipped(aw.clip_by_global_norm(1.0), {"a": jnp.array([1.0, jnp.inf]), "b": jnp.ones(2)})
    assert np.isnan(out["a"]).all() and np.isnan(out["b"]).all()


# Fixed shapes: one compilation serves every example. No subnormals: XLA CPU flushes them to 0.
elements = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
matrices = hnp.arrays(np.float32, (3, 4), elements=elements)
vectors = hnp.arrays(np.float32, (5,), elements=elements)


@given(a=matrices, b=vectors, max_norm=st.floats(1e-3, 1e3))
def test_global_clipping_properties(a, b, max_norm):
    grads = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
    out = clip_with_traced_threshold(aw.clip_by_global_norm, grads, max_norm)
    norm = float(np.sqrt(np.sum(a.astype(np.float64) ** 2) + np.sum(b.astype(np.float64) ** 2)))
    factor = max_norm / max(norm, max_norm)
    for k in grads:  # the same factor for every leaf: directions are kept
        np.testing.assert_allclose(out[k], np.asarray(grads[k], np.float64) * factor,
                                   rtol=PEER_RTOL, atol=1e-30)
    assert float(aw.clipping.global_norm(out)) <= max_norm * (1 + PEER_RTOL)


@given(a=matrices, max_value=st.floats(1e-3, 1e3))
def test_value_and_norm_clipping_properties(a, max_value):
    out = clip_with_traced_threshold(aw.clip_by_value, {"a": jnp.asarray(a)}, max_value)["a"]
    np.testing.assert_array_equal(out, np.clip(a, -np.float32(max_value), np.float32(max_value)))
    out = clip_with_traced_threshold(aw.clip_by_norm, {"a": jnp.asarray(a)}, max_value)["a"]
    norm = float(np.linalg.norm(a.astype(np.float64)))
    np.testing.assert_allclose(out, a * (max_value / max(norm, max_value)), rtol=PEER_RTOL,
                               atol=1e-30)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2])
def test_global_norm_matches_torch_clip_grad_norm(scale):
    import torch
    grads = random_grads(0, scale)
    tensors = [torch.tensor(g).requires_grad_() for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
    out = clipped(aw.clip_by_global_norm(1.0, eps=1e-6), {k: jnp.asarray(g) for k, g in grads.items()})
    for k, t in zip(grads, tensors):
        np.testing.assert_allclose(out[k], t.grad.numpy(), rtol=PEER_RTOL, atol=1e-30)


@pytest.mark.parametrize("option, transform", [
    ("clipvalue", aw.clip_by_value(0.5)),
    ("clipnorm", aw.clip_by_norm(0.5)),
    ("global_clipnorm", aw.clip_by_global_norm(0.5)),
])
def test_matches_keras_optimizer_clipping(option, transform):
    """Keras SGD(learning_rate=1) from zero weights moves them to exactly minus the clipped
    gradient, so the optimizer run exposes Keras' own clipping."""
    import keras
    grads = random_grads(1, 1.0)
    variables = [keras.Variable(np.zeros_like(g)) for g in grads.values()]
    keras.optimizers.SGD(learning_rate=1.0, **{option: 0.5}).apply(
        [jnp.asarray(g) for g in grads.values()], variables)
    out = clipped(transform, {k: jnp.asarray(g) for k, g in grads.items()})
    for k, v in zip(grads, variables):
        np.testing.assert_allclose(out[k], -np.asarray(v.value), rtol=PEER_RTOL, atol=1e-30)


@pytest.mark.parametrize("factory", [aw.clip_by_value, aw.clip_by_norm, aw.clip_by_global_norm])
def test_bad_thresholds_are_rejected(factory):
    name = "max_value" if factory is aw.clip_by_value else "max_norm"
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        factory(0.0)
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, inf\], got -1.0"):
        factory(-1.0)
    with pytest.raises(TypeError, match=f"{name} must be a float"):
        factory([1.0])
    with pytest.raises(ValueError, match="eps must be in"):
        aw.clip_by_global_norm(1.0, eps=-1e-6)
