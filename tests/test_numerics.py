"""The shared numerical kernels: precise 1-β and 1-β^t, saturating counters, dtype policy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adamw_jax import _numerics as num


@given(beta=st.floats(0.0, 0.99999), step=st.integers(1, 10**7))
def test_bias_correction_keeps_full_relative_precision(beta, step):
    one_minus = np.float32(1.0 - beta)
    with np.errstate(divide="ignore"):  # beta = 0: log1p(-1) = -inf, and 1 - 0^t = 1 exactly
        exact = -np.expm1(step * np.log1p(-np.float64(one_minus)))
    got = float(num.bias_correction(jnp.float32(one_minus), jnp.int32(step)))
    # A handful of float32 ulps, relative, at every step: no cancellation for small t.
    assert abs(got - exact) <= 8 * np.finfo(np.float32).eps * exact


def test_bias_correction_beats_naive_float32_at_small_steps():
    naive = 1 - np.float32(0.999) ** np.float32(1)
    careful = float(num.bias_correction(num.one_minus(0.999), 1))
    assert abs(careful - 1e-3) / 1e-3 < 1e-7 < abs(naive - 1e-3) / 1e-3


def test_one_minus_of_python_float_is_the_nearest_float32():
    assert num.one_minus(0.999).dtype == jnp.float32
    assert float(num.one_minus(0.999)) == float(np.float32(1.0 - 0.999))


def test_safe_increment_saturates_instead_of_wrapping():
    top = jnp.int32(np.iinfo(np.int32).max)
    assert int(num.safe_increment(top)) == np.iinfo(np.int32).max
    assert int(num.safe_increment(jnp.int32(41))) == 42
    assert num.safe_increment(jnp.int32(0)).dtype == jnp.int32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_compute_dtype_is_at_least_float32(dtype):
    assert num.compute_dtype(dtype) == jnp.float32


def test_hyperparameters_are_strong_float32():
    b2 = num.as_hyperparameter(0.999)
    assert b2.dtype == jnp.float32
    assert (b2 * jnp.ones((), jnp.bfloat16)).dtype == jnp.float32


@pytest.mark.parametrize("bad", ["int8x", jnp.int32, "bool"])
def test_storage_dtype_rejects_non_floating(bad):
    with pytest.raises(TypeError, match="state_dtype"):
        num.storage_dtype(bad, argument="state_dtype")
