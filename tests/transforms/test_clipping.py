"""Clipping: hand-computed cases, properties, and the real torch and Keras clipping side by side."""

from __future__ import annotations

import functools
import inspect
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
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


@pytest.mark.parametrize(
    "transform", [aw.clip_by_value(1.0), aw.clip_by_norm(1.0), aw.clip_by_global_norm(1.0)]
)
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


def test_nonfinite_norm_makes_its_gradients_nan():
    grads = {"a": jnp.array([1.0, jnp.inf]), "b": jnp.ones(2)}
    out = clipped(aw.clip_by_global_norm(1.0), grads)
    assert np.isnan(out["a"]).all() and np.isnan(out["b"]).all()
    out = clipped(aw.clip_by_norm(1.0), grads)  # per tensor: only the tensor with the inf
    assert np.isnan(out["a"]).all() and np.all(out["b"] == np.float32(1 / np.sqrt(2)))


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
        np.testing.assert_allclose(
            out[k], np.asarray(grads[k], np.float64) * factor, rtol=PEER_RTOL, atol=1e-30
        )
    assert float(aw.clipping.global_norm(out)) <= max_norm * (1 + PEER_RTOL)


@given(a=matrices, max_value=st.floats(1e-3, 1e3))
def test_value_and_norm_clipping_properties(a, max_value):
    out = clip_with_traced_threshold(aw.clip_by_value, {"a": jnp.asarray(a)}, max_value)["a"]
    np.testing.assert_array_equal(out, np.clip(a, -np.float32(max_value), np.float32(max_value)))
    out = clip_with_traced_threshold(aw.clip_by_norm, {"a": jnp.asarray(a)}, max_value)["a"]
    norm = float(np.linalg.norm(a.astype(np.float64)))
    np.testing.assert_allclose(
        out, a * (max_value / max(norm, max_value)), rtol=PEER_RTOL, atol=1e-30
    )


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2])
def test_global_norm_matches_torch_clip_grad_norm(scale):
    import torch

    grads = random_grads(0, scale)
    tensors = [torch.tensor(g).requires_grad_() for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
    out = clipped(
        aw.clip_by_global_norm(1.0, eps=1e-6), {k: jnp.asarray(g) for k, g in grads.items()}
    )
    for k, t in zip(grads, tensors):
        np.testing.assert_allclose(out[k], t.grad.numpy(), rtol=PEER_RTOL, atol=1e-30)


@pytest.mark.parametrize(
    "option, transform",
    [
        ("clipvalue", aw.clip_by_value(0.5)),
        ("clipnorm", aw.clip_by_norm(0.5)),
        ("global_clipnorm", aw.clip_by_global_norm(0.5)),
    ],
)
def test_matches_keras_optimizer_clipping(option, transform):
    """Keras SGD(learning_rate=1) from zero weights moves them to exactly minus the clipped
    gradient, so the optimizer run exposes Keras' own clipping."""
    import keras

    grads = random_grads(1, 1.0)
    variables = [keras.Variable(np.zeros_like(g)) for g in grads.values()]
    keras.optimizers.SGD(learning_rate=1.0, **{option: 0.5}).apply(
        [jnp.asarray(g) for g in grads.values()], variables
    )
    out = clipped(transform, {k: jnp.asarray(g) for k, g in grads.items()})
    for k, v in zip(grads, variables):
        np.testing.assert_allclose(out[k], -np.asarray(v.value), rtol=PEER_RTOL, atol=1e-30)


@pytest.mark.parametrize("factory", [aw.clip_by_value, aw.clip_by_norm, aw.clip_by_global_norm])
def test_bad_thresholds_are_rejected(factory):
    name = "max_value" if factory is aw.clip_by_value else "max_norm"
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, inf\], got -1.0.*inf disables"):
        factory(-1.0)
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, inf\], got nan"):
        factory(float("nan"))
    with pytest.raises(TypeError, match=f"{name} must be a float"):
        factory([1.0])
    with pytest.raises(TypeError, match=f"{name} must be a float"):
        factory("1.0")
    with pytest.raises(ValueError, match="eps must be in"):
        aw.clip_by_global_norm(1.0, eps=-1e-6)
    with pytest.raises(ValueError, match="eps must be in"):
        aw.clip_by_global_norm(1.0, eps=float("inf"))


# ----------------------------------------------------------------------------- no overflow

# Rounding of the clipped value to its leaf's dtype (half an ulp, relative) on top of the
# float32 ulps of PEER_RTOL; absolute: what XLA flushes (float32/bfloat16 results below the
# smallest normal) or half float16's smallest subnormal.
DTYPE_RTOL = {
    jnp.float32: PEER_RTOL,
    jnp.bfloat16: 2.0**-8 + PEER_RTOL,
    jnp.float16: 2.0**-11 + PEER_RTOL,
}
DTYPE_ATOL = {jnp.float32: 1.2e-38, jnp.bfloat16: 1.2e-38, jnp.float16: 2.0**-25}


def reference_clip(grads, max_norm, *, per_tensor=False, eps=0.0):
    """``g · c / max(‖G‖ + eps, c)`` in float64 NumPy, from the leaves as stored."""
    g64 = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in grads.items()}
    if per_tensor:
        return {k: v * max_norm / max(np.linalg.norm(v), max_norm) for k, v in g64.items()}
    norm = np.sqrt(sum(np.sum(v**2) for v in g64.values()))
    return {k: v * max_norm / max(norm + eps, max_norm) for k, v in g64.items()}


def assert_matches_reference(out, grads, expected):
    for k, g in grads.items():
        dtype = jnp.dtype(g.dtype).type
        assert out[k].dtype == g.dtype
        actual = np.asarray(out[k], np.float32).astype(np.float64)
        assert np.all(np.isfinite(actual)), (k, actual)
        np.testing.assert_allclose(
            actual, expected[k], rtol=DTYPE_RTOL[dtype], atol=DTYPE_ATOL[dtype]
        )


OVERFLOWING = {
    "every element 1e20": {"w": jnp.full((8, 4), 1e20), "b": jnp.full((3,), -1e20)},
    "1000 elements of 6e17": {"w": jnp.full((1000,), 6e17)},
    "the float32 maximum": {"w": jnp.array([3.4e38, -3.4e38, 1.0])},
    "mixed dtypes": {
        "w": jnp.full((5,), 3e38, jnp.bfloat16),
        "h": jnp.full((6,), -6e4, jnp.float16),
        "f": jnp.array([1e-30, 2.0, 3e37]),
    },
    "tiny normals": {"w": jnp.full((100,), 2e-38), "b": jnp.array([1e-36, -3e-37])},
}


@pytest.mark.parametrize("case", sorted(OVERFLOWING))
@pytest.mark.parametrize("max_norm", [1.0, 1e-30, 1e30])
def test_norms_do_not_overflow_and_match_float64(case, max_norm):
    """Sums of squares beyond float32's range (1e20² = 1e40) clip to the exact answer."""
    grads = OVERFLOWING[case]
    assert_matches_reference(
        clipped(aw.clip_by_global_norm(max_norm), grads), grads, reference_clip(grads, max_norm)
    )
    assert_matches_reference(
        clipped(aw.clip_by_global_norm(max_norm, eps=1e-6), grads),
        grads,
        reference_clip(grads, max_norm, eps=1e-6),
    )
    assert_matches_reference(
        clipped(aw.clip_by_norm(max_norm), grads),
        grads,
        reference_clip(grads, max_norm, per_tensor=True),
    )


def test_global_norm_is_exact_beyond_the_float32_square_range():
    grads = OVERFLOWING["1000 elements of 6e17"]
    g64 = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in grads.items()}
    expected = np.sqrt(sum(np.sum(v**2) for v in g64.values()))  # 1.9e19
    norm = float(jax.jit(aw.clipping.global_norm)(grads))
    np.testing.assert_allclose(norm, expected, rtol=PEER_RTOL)
    # Only a norm beyond the float32 maximum itself is inf; the clipped gradient stays exact.
    assert float(jax.jit(aw.clipping.global_norm)(OVERFLOWING["the float32 maximum"])) == np.inf


@pytest.mark.parametrize(
    "transform", [aw.clip_by_norm(1.0), aw.clip_by_global_norm(1.0), aw.clip_by_global_norm(1e-30)]
)
def test_subnormal_gradients_pass_bit_for_bit(transform):
    """Subnormals (1e-45; XLA flushes them in arithmetic) are below every threshold and come
    back as they went in."""
    for grads in (
        {"w": jnp.full((7,), 1e-45), "b": jnp.array([-1e-40, 3e-39])},
        {"w": jnp.full((7,), 1e-45, jnp.float16)},
    ):
        out = clipped(transform, grads)
        for k in grads:
            np.testing.assert_array_equal(
                np.asarray(out[k]).view(np.uint8), np.asarray(grads[k]).view(np.uint8)
            )


@pytest.mark.parametrize(
    "transform",
    [
        aw.clip_by_global_norm(float("inf")),
        aw.clip_by_norm(float("inf")),
        aw.clip_by_value(float("inf")),
    ],
)
def test_infinite_threshold_never_clips(transform):
    big = {"w": jnp.full((3,), 3e38), "h": jnp.full((2,), 6e4, jnp.float16)}
    jax.tree_util.tree_map(np.testing.assert_array_equal, clipped(transform, big), big)


def test_zero_threshold_zeroes_every_gradient_as_optax():
    grads = {"a": jnp.array([3.0, -4.0]), "b": jnp.zeros(2)}
    for ours, peer in (
        (aw.clip_by_global_norm(0.0), None),
        (aw.clip_by_norm(0.0), None),
        (aw.clip_by_value(0.0), optax.clip(0.0)),
    ):
        out = clipped(ours, grads)
        for k in grads:
            np.testing.assert_array_equal(out[k], np.zeros(2, np.float32))
        if peer is not None:
            jax.tree_util.tree_map(np.testing.assert_array_equal, out, clipped(peer, grads))


# ----------------------------------------------------------------------------- optax side by side


def test_signatures_take_optax_positional_order():
    ours = inspect.signature(aw.clip_by_global_norm).parameters
    peer = inspect.signature(optax.clip_by_global_norm).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(peer)  # ["max_norm"]; eps is keyword-only
    for factory in (aw.clip_by_value, aw.clip_by_norm):  # one positional threshold, as optax.clip
        params = inspect.signature(factory).parameters.values()
        assert [p.kind for p in params] == [inspect.Parameter.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_values_equal_optax(scale, max_norm):
    """Where optax is finite and right (its sum of squares does not overflow): equal to float32
    rounding. ``clip_by_norm(c)`` is ``optax.clip_by_block_rms(c / sqrt(size))`` leaf by leaf."""
    grads = {k: jnp.asarray(v) for k, v in random_grads(2, scale).items()}
    pairs = [
        (aw.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)),
        (aw.clip_by_value(max_norm * scale / 3), optax.clip(max_norm * scale / 3)),
    ]
    for ours, peer in pairs:
        out, expected = clipped(ours, grads), clipped(peer, grads)
        for k in grads:
            np.testing.assert_allclose(out[k], expected[k], rtol=PEER_RTOL, atol=1e-30)
    out = clipped(aw.clip_by_norm(max_norm), grads)
    for k, g in grads.items():
        expected = clipped(optax.clip_by_block_rms(max_norm / np.sqrt(max(g.size, 1))), {k: g})
        np.testing.assert_allclose(out[k], expected[k], rtol=PEER_RTOL, atol=1e-30)


def test_extra_arguments_are_accepted_and_ignored():
    grads = {"w": jnp.array([3.0, 4.0])}
    for transform in (aw.clip_by_value(1.0), aw.clip_by_norm(1.0), aw.clip_by_global_norm(1.0)):
        assert isinstance(transform, optax.GradientTransformationExtraArgs)
        update = jax.jit(lambda g, t=transform: t.update(g, t.init(g), None, value=jnp.ones([])))
        out, _ = update(grads)
        jax.tree_util.tree_map(np.testing.assert_array_equal, out, clipped(transform, grads))


# ----------------------------------------------------------------------------- any magnitude

LEAF_SHAPES = {"a": (4,), "b": (3, 2), "c": ()}
dtypes = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])


@st.composite
def any_magnitude_grads(draw):
    """Finite gradients of every magnitude their dtype holds (1e-45 … 3.4e38 in float32), one
    random dtype per leaf: ``±10^e`` with ``e`` uniform over the dtype's decades."""
    grads = {}
    for name, shape in LEAF_SHAPES.items():
        dtype = draw(dtypes)
        info = jnp.finfo(dtype)
        low, high = np.log10(float(info.smallest_subnormal)), np.log10(float(info.max))
        exponents = draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high)))
        signs = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0])))
        values = np.clip(signs * 10.0**exponents, -float(info.max), float(info.max))
        grads[name] = jnp.asarray(values.astype(np.float32), dtype)
    return grads


@given(grads=any_magnitude_grads(), max_norm=st.floats(1e-6, 1e6), per_tensor=st.booleans())
def test_any_finite_gradient_clips_to_a_finite_gradient_within_the_threshold(
    grads, max_norm, per_tensor
):
    factory = aw.clip_by_norm if per_tensor else aw.clip_by_global_norm
    out = clip_with_traced_threshold(factory, grads, max_norm)
    assert_matches_reference(out, grads, reference_clip(grads, max_norm, per_tensor=per_tensor))
    out64 = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in out.items()}
    norms = (
        [np.linalg.norm(v) for v in out64.values()]
        if per_tensor
        else [np.sqrt(sum(np.sum(v**2) for v in out64.values()))]
    )
    rtol = max(DTYPE_RTOL[jnp.dtype(g.dtype).type] for g in grads.values())
    atol = np.sqrt(sum(g.size for g in grads.values())) * 2.0**-25  # float16 subnormal rounding
    assert max(norms) <= max_norm * (1 + rtol) + atol
