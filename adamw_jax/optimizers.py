"""``adamw`` and ``adam``: chains of the building blocks, nothing more.

    adamw = [kahan_summation]([clip_by_update_rms](chain([negate if maximize],
                  [scale_by_cautious_mask](scale_by_adam), [add_(cautious_)decayed_weights],
                  scale_by_learning_rate, [decoupled/cautious decay])))

``weight_decay_mode="coupled"`` (torch, optax, Keras): ``θ ← θ - η_t·(u + λ·θ)``.
``weight_decay_mode="decoupled"`` (Loshchilov & Hutter, Algorithm 2):
``θ ← θ - η_t·u - (η_t/η_peak)·λ·θ``.
``weight_decay_mode="corrected"`` (AdamC, Defazio 2025; timm's ``corrected_weight_decay``):
``θ ← θ - η_t·(u + (η_t/η_peak)·λ·θ)``, i.e. the decay is ``λ·η_t²/η_peak``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from adamw_jax import _numerics as num
from adamw_jax import _validation as check
from adamw_jax._states import transformation
from adamw_jax.fused import FusedTransformation, fused_adam_family
from adamw_jax.lowbit import LowPrecisionParamsState, low_precision_params
from adamw_jax.lowbit.kahan import kahan_summation as kahan_summation_of
from adamw_jax.transforms._masking import Mask
from adamw_jax.transforms.learning_rate import scale_by_learning_rate
from adamw_jax.transforms.moments import scale_by_adam
from adamw_jax.transforms.weight_decay import (
    add_decayed_weights,
    check_weight_decay,
    decoupled_weight_decay,
)
from adamw_jax.updates import apply_updates
from adamw_jax.variants.cautious import add_cautious_decayed_weights, scale_by_cautious_mask
from adamw_jax.variants.rms_clip import clip_by_update_rms

WEIGHT_DECAY_MODES = ("coupled", "decoupled", "corrected")


def _check_learning_rate_and_flags(learning_rate: optax.ScalarOrSchedule, **flags: Any) -> None:
    """The checks ``adamw`` and ``adam`` add to those of their blocks (``scale_by_adam`` checks
    the moments' options): a finite ``learning_rate`` >= 0 and real bools."""
    check.check_learning_rate(learning_rate)
    for name, flag in flags.items():
        check.check_bool(name, flag)


def _schedule_multiplier(
    learning_rate: optax.ScalarOrSchedule, peak_learning_rate: float | None, mode: str
) -> optax.Schedule | None:
    """``s_t = η_t / η_peak`` for decoupled decay; ``None`` (``s_t = 1``) for a constant rate."""
    if peak_learning_rate is not None:
        check.check_positive(
            "peak_learning_rate",
            peak_learning_rate,
            finite=True,
            hint="It is the largest value of the learning-rate schedule (the "
            "decay multiplier divides by it).",
        )
        if callable(learning_rate):
            return lambda count: learning_rate(count) / peak_learning_rate
        return lambda count: learning_rate / peak_learning_rate
    if callable(learning_rate):
        raise ValueError(
            f"weight_decay_mode={mode!r} with a learning-rate schedule needs "
            "peak_learning_rate=... (the schedule's maximum), since decay is scaled by "
            "learning_rate(t) / peak_learning_rate."
        )
    return None


def _check_variants(
    fused: bool,
    *,
    cautious: bool,
    eps_mode: str,
    rms_clip_threshold: float | None,
    cautious_weight_decay: bool = False,
    kahan_summation: bool = False,
) -> None:
    """The variant options' checks; ``fused=True`` implements none of them (one pass of plain
    Adam(W)), so asking for one there is a ValueError naming it."""
    check.check_bool("cautious", cautious)
    check.check_bool("cautious_weight_decay", cautious_weight_decay)
    check.check_bool("kahan_summation", kahan_summation)
    if rms_clip_threshold is not None:
        check.check_positive(
            "rms_clip_threshold",
            rms_clip_threshold,
            finite=True,
            hint="StableAdamW uses 1.0; None turns the clipping off.",
        )
    used = {
        "cautious=True": cautious,
        "cautious_weight_decay=True": cautious_weight_decay,
        "rms_clip_threshold": rms_clip_threshold is not None,
        "eps_mode='atan2'": eps_mode == "atan2",
        "kahan_summation=True": kahan_summation,
    }
    if fused and any(used.values()):
        raise ValueError(
            f"fused=True does not implement {', '.join(k for k, on in used.items() if on)}: the "
            "one-pass step is plain Adam(W). Use fused=False with this option."
        )


def _adam_family(
    learning_rate: optax.ScalarOrSchedule,
    adam_kwargs: dict[str, Any],
    *,
    stochastic_rounding: bool = False,
    master_weights: bool = False,
    cautious: bool = False,
    cautious_weight_decay: bool = False,
    rms_clip_threshold: float | None = None,
    kahan_summation: bool = False,
    **chain_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """``_adam_chain``, wrapped in ``low_precision_params`` for stochastic rounding or master
    weights of bf16/f16 parameters, or in ``kahan_summation``."""
    _check_variants(
        chain_kwargs["fused"],
        cautious=cautious,
        eps_mode=adam_kwargs["eps_mode"],
        rms_clip_threshold=rms_clip_threshold,
        cautious_weight_decay=cautious_weight_decay,
        kahan_summation=kahan_summation,
    )
    if kahan_summation and (stochastic_rounding or master_weights):
        raise ValueError(
            "kahan_summation=True is an alternative to stochastic_rounding and master_weights "
            "(each keeps bf16/f16 parameters learning); choose one."
        )
    if stochastic_rounding:
        adam_kwargs = dict(adam_kwargs, stochastic_rounding=True)
    optimizer = _adam_chain(learning_rate, adam_kwargs, cautious=cautious, **chain_kwargs)
    if rms_clip_threshold is not None:
        optimizer = clip_by_update_rms(
            optimizer, rms_clip_threshold, b2=adam_kwargs["b2"], eps=adam_kwargs["eps"]
        )
    if kahan_summation:
        return _with_state_check(kahan_summation_of(optimizer))
    optimizer = _with_state_check(optimizer)
    if stochastic_rounding or master_weights:
        wrapper = low_precision_params(
            optimizer, master_weights=master_weights, stochastic_rounding=stochastic_rounding
        )
        if isinstance(optimizer, FusedTransformation):
            return _keeping_the_one_pass_step(wrapper, optimizer)
        return wrapper
    return optimizer


def _keeping_the_one_pass_step(
    wrapper: optax.GradientTransformationExtraArgs, inner: FusedTransformation
) -> FusedTransformation:
    """``wrapper = low_precision_params(inner)`` whose ``step`` is ``inner``'s one pass where no
    parameter is bf16/f16 (the wrapper is the identity on float32 leaves), else ``update`` and
    ``θ + u``."""

    def step_fn(
        grads: optax.Updates, state: LowPrecisionParamsState, params: optax.Params, **extra: Any
    ) -> tuple[optax.Params, optax.OptState]:
        if any(num.is_low_precision(p.dtype) for p in jax.tree_util.tree_leaves(params)):
            updates, new_state = wrapper.update(grads, state, params, **extra)
            return apply_updates(params, updates), new_state
        new_params, inner_state = inner.step(grads, state.inner_state, params, **extra)
        return new_params, state._replace(
            count=num.safe_increment(state.count), inner_state=inner_state
        )

    return FusedTransformation(wrapper.init, wrapper.update, step_fn)


def _state_kinds(state: Any) -> Any:
    """The state's shape of types: a chain's tuple of state names, or one state's name."""
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(_state_kinds(part) for part in state)
    return type(state).__name__


def _check_same_tree(updates: optax.Updates, params: optax.Params | None) -> None:
    """Name the key paths where the gradients' tree and the parameters' differ."""
    if params is None:
        return
    structure = jax.tree_util.tree_structure
    if structure(updates) == structure(params):
        return
    paths = [
        {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}
        for tree in (updates, params)
    ]
    only_grads, only_params = sorted(paths[0] - paths[1]), sorted(paths[1] - paths[0])
    where = (
        f"only in the gradients: {', '.join(only_grads) or 'none'}; only in the parameters: "
        f"{', '.join(only_params) or 'none'}"
        if only_grads or only_params
        else f"the containers differ: {structure(updates)} vs {structure(params)}"
    )
    raise ValueError(
        f"the gradients' tree does not match the parameters' ({where}). Pass gradients of exactly "
        "the tree being optimized, e.g. jax.grad of the loss with respect to those parameters."
    )


def _with_state_check(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` whose ``update`` (and a fused optimizer's ``step``) names gradients whose
    tree differs from the parameters', and a state made by a differently configured optimizer
    (adam vs adamw, ``maximize``, ``fused``...), instead of failing inside the chain."""

    def checked(method: Callable[..., Any]) -> Callable[..., Any]:
        def run(
            updates: optax.Updates,
            state: optax.OptState,
            params: optax.Params | None = None,
            **extra_args: Any,
        ):
            _check_same_tree(updates, params)
            # Abstract: init is traced for its structure, nothing is computed.
            expected = _state_kinds(jax.eval_shape(optimizer.init, updates))
            got = _state_kinds(state)
            if expected != got:
                raise ValueError(
                    f"this optimizer's state is {expected} but update got {got}: the state was "
                    "created by a differently configured optimizer (adam vs adamw, maximize, "
                    "fused, weight_decay_mode...). Call init with the optimizer you update with."
                )
            return method(updates, state, params, **extra_args)

        return run

    if isinstance(optimizer, FusedTransformation):
        return FusedTransformation(
            optimizer.init, checked(optimizer.update), checked(optimizer.step)
        )
    return transformation(optimizer.init, checked(optimizer.update))


def _adam_chain(
    learning_rate: optax.ScalarOrSchedule,
    adam_kwargs: dict[str, Any],
    *,
    maximize: bool,
    fused: bool,
    cautious: bool = False,
    decay: optax.GradientTransformation | None = None,
    decay_after_learning_rate: bool = False,
    decay_kwargs: dict[str, Any] | None = None,
) -> optax.GradientTransformation:
    """The chain, or with ``fused=True`` the one-pass equivalent built from ``decay_kwargs``
    (the arguments ``decay`` was built from: weight_decay, mask, schedule_multiplier)."""
    if fused:
        return fused_adam_family(
            learning_rate,
            adam_kwargs,
            maximize=maximize,
            decay_after_learning_rate=decay_after_learning_rate,
            **(decay_kwargs or {}),
        )
    steps = [optax.scale(-1.0)] if maximize else []
    adam = scale_by_adam(**adam_kwargs)
    steps.append(scale_by_cautious_mask(adam) if cautious else adam)
    if decay is not None and not decay_after_learning_rate:
        steps.append(decay)
    steps.append(scale_by_learning_rate(learning_rate))
    if decay is not None and decay_after_learning_rate:
        steps.append(decay)
    return optax.chain(*steps)


def _adam_kwargs(
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    eps_mode: str,
    amsgrad: bool,
    nesterov: bool,
    mu_dtype: Any,
    nu_dtype: Any,
) -> dict[str, Any]:
    """``scale_by_adam``'s arguments as ``adamw`` and ``adam`` pass them."""
    return dict(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        eps_mode=eps_mode,
        amsgrad=amsgrad,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )


def _decay(
    mode: str,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule,
    mask: Mask | None,
    peak_learning_rate: float | None,
    *,
    cautious: bool,
) -> tuple[dict[str, Any], optax.GradientTransformation]:
    """The decay box of ``mode`` and the arguments it was built from (the fused step's).

    ``"corrected"`` is the coupled box with ``λ_t·η_t/η_peak`` as its coefficient."""
    if mode == "coupled" and peak_learning_rate is not None:
        raise ValueError(
            "peak_learning_rate is only used with weight_decay_mode='decoupled' or 'corrected'; "
            "remove it."
        )
    if mode == "decoupled":
        kwargs: dict[str, Any] = dict(
            weight_decay=weight_decay,
            mask=mask,
            schedule_multiplier=_schedule_multiplier(learning_rate, peak_learning_rate, mode),
        )
        box = (
            add_cautious_decayed_weights(**kwargs, after_learning_rate=True)
            if cautious
            else decoupled_weight_decay(**kwargs)
        )
        return kwargs, box
    if mode == "corrected":
        check_weight_decay(weight_decay)
        multiplier = _schedule_multiplier(learning_rate, peak_learning_rate, mode)
        if multiplier is not None:
            weight_decay = _times(weight_decay, multiplier)
    kwargs = dict(weight_decay=weight_decay, mask=mask)
    return kwargs, (
        add_cautious_decayed_weights(**kwargs) if cautious else add_decayed_weights(**kwargs)
    )


def _times(value: optax.ScalarOrSchedule, schedule: optax.Schedule) -> optax.Schedule:
    """The schedule ``count ↦ value(count)·schedule(count)`` (``value`` a float or schedule)."""
    return lambda count: num.hyperparameter_at(value, count) * schedule(count)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    nesterov: bool = False,
    weight_decay_mode: str = "coupled",
    eps_mode: str = "adam",
    amsgrad: bool = False,
    maximize: bool = False,
    nu_dtype: Any = None,
    fused: bool = False,
    peak_learning_rate: float | None = None,
    stochastic_rounding: bool = False,
    master_weights: bool = False,
    cautious: bool = False,
    cautious_weight_decay: bool = False,
    rms_clip_threshold: float | None = None,
    kahan_summation: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AdamW (Loshchilov & Hutter 2019) with every option of torch, optax and Keras.

    The positional arguments and their defaults are ``optax.adamw``'s (so ``weight_decay``
    defaults to optax's 1e-4, not torch's 1e-2: ``aw.presets.torch_adamw`` keeps torch's);
    every addition is keyword-only.

    Args:
      learning_rate: ``η``, a float >= 0 or a schedule of the 0-based step.
      b1, b2, eps, eps_root, eps_mode, amsgrad, nesterov, mu_dtype, nu_dtype: see
        ``scale_by_adam``.
      weight_decay: ``λ``, a float >= 0 or a schedule (default 1e-4, optax's).
      weight_decay_mode: ``"coupled"`` (``θ -= η_t·λ·θ``: torch, optax, Keras),
        ``"decoupled"`` (``θ -= (η_t/η_peak)·λ·θ``: the paper's Algorithm 2) or
        ``"corrected"`` (``θ -= (η_t²/η_peak)·λ·θ``: AdamC, timm's ``corrected_weight_decay``).
      mask: which leaves to decay: a tree of bools, a prefix of one, or a callable.
      maximize: ascend instead of descend (the gradient is negated first, as torch).
      fused: use the flat-buffer fused implementation (same numbers, fewer kernels).
      peak_learning_rate: ``η_peak`` for decoupled or corrected decay with a schedule (with a
        float learning rate, ``η_peak`` is the learning rate and the multiplier is 1).
      stochastic_rounding: round low-precision moments and bf16/f16 parameters stochastically
        (noise from the step count), so updates below half an ulp still count on average.
      master_weights: keep float32 copies of bf16/f16 parameters in the state and round the
        parameters from them (see ``adamw_jax.lowbit.low_precision_params``).
      cautious: C-AdamW (Liang et al. 2024): drop the coordinates of the Adam direction that
        disagree in sign with the gradient, rescale by the kept fraction (see
        ``adamw_jax.variants.cautious.scale_by_cautious_mask``).
      cautious_weight_decay: decay only where ``θ`` and the update agree in sign (Chen et al.
        2025; see ``adamw_jax.variants.cautious.add_cautious_decayed_weights``).
      rms_clip_threshold: StableAdamW's update clipping: each tensor's step (decay included)
        divided by ``max(1, RMS(g²/v̂)/threshold)``; ``None`` (default) off, else finite > 0
        (see ``adamw_jax.variants.rms_clip.clip_by_update_rms``).
      kahan_summation: Kahan-compensated bf16/f16 parameters (torch-optimi's ``kahan_sum``):
        a buffer of the parameter dtype (2 bytes per bf16 parameter) keeps what rounding lost
        (see ``adamw_jax.lowbit.kahan``); exclusive with ``stochastic_rounding``/``master_weights``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; apply its updates with
      ``adamw_jax.apply_updates`` or ``optax.apply_updates``.
    """
    check.check_choice("weight_decay_mode", weight_decay_mode, WEIGHT_DECAY_MODES)
    check.check_bool("cautious_weight_decay", cautious_weight_decay)
    _check_learning_rate_and_flags(
        learning_rate,
        maximize=maximize,
        fused=fused,
        stochastic_rounding=stochastic_rounding,
        master_weights=master_weights,
    )
    decay_kwargs, decay = _decay(
        weight_decay_mode,
        learning_rate,
        weight_decay,
        mask,
        peak_learning_rate,
        cautious=cautious_weight_decay,
    )
    return _adam_family(
        learning_rate,
        _adam_kwargs(b1, b2, eps, eps_root, eps_mode, amsgrad, nesterov, mu_dtype, nu_dtype),
        maximize=maximize,
        fused=fused,
        decay=decay,
        decay_after_learning_rate=weight_decay_mode == "decoupled",
        decay_kwargs=decay_kwargs,
        stochastic_rounding=stochastic_rounding,
        master_weights=master_weights,
        cautious=cautious,
        cautious_weight_decay=cautious_weight_decay,
        rms_clip_threshold=rms_clip_threshold,
        kahan_summation=kahan_summation,
    )


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    eps_mode: str = "adam",
    amsgrad: bool = False,
    maximize: bool = False,
    nu_dtype: Any = None,
    fused: bool = False,
    stochastic_rounding: bool = False,
    master_weights: bool = False,
    cautious: bool = False,
    rms_clip_threshold: float | None = None,
    kahan_summation: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adam (Kingma & Ba 2015) without weight decay: ``optax.adam``'s positional arguments and
    defaults, the other options keyword-only and as in ``adamw``."""
    _check_learning_rate_and_flags(
        learning_rate,
        maximize=maximize,
        fused=fused,
        stochastic_rounding=stochastic_rounding,
        master_weights=master_weights,
    )
    return _adam_family(
        learning_rate,
        _adam_kwargs(b1, b2, eps, eps_root, eps_mode, amsgrad, nesterov, mu_dtype, nu_dtype),
        maximize=maximize,
        fused=fused,
        stochastic_rounding=stochastic_rounding,
        master_weights=master_weights,
        cautious=cautious,
        rms_clip_threshold=rms_clip_threshold,
        kahan_summation=kahan_summation,
    )
