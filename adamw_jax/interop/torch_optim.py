"""Move an Adam/AdamW run between ``torch.optim`` and adamw_jax in the middle of training.

A torch ``Adam``/``AdamW`` ``state_dict()`` is ``{"state": {i: {"step", "exp_avg", "exp_avg_sq",
["max_exp_avg_sq"]}}, "param_groups": [{..., "params": [i, ...]}]}``, one entry per parameter
index ``i``. The matching adamw_jax state (of ``presets.torch_adamw``/``torch_adam``, or any chain
with one ``scale_by_adam``) holds the same numbers:

    exp_avg ↔ ScaleByAdamState.mu        exp_avg_sq ↔ nu        max_exp_avg_sq ↔ nu_max
    step    ↔ every ``count`` in the chain (moments, weight decay, learning-rate schedule)

Torch parameter ``i`` (in the order of ``param_groups[*]["params"]``) is the ``i``-th leaf of the
parameter tree in ``jax.tree_util.tree_leaves`` order, with the same shape. Only the state is
converted: hyperparameters stay with each side's optimizer (and torch's LR scheduler state with
torch). torch is imported only when ``to_torch_state_dict`` runs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamw_jax import _numerics as num
from adamw_jax._states import find_state
from adamw_jax.transforms.moments import ScaleByAdamState

_TORCH_MOMENTS = {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"}


def _torch_indices(param_groups: Any, leaves: int) -> list[int]:
    try:
        indices = [int(i) for group in param_groups for i in group["params"]]
    except (TypeError, KeyError) as error:
        raise ValueError(
            "param_groups must be torch's state_dict()['param_groups']: a list of dicts with a "
            f"'params' list of indices ({error!r})."
        ) from None
    if len(indices) != leaves:
        raise ValueError(
            f"torch's param_groups list {len(indices)} parameters but the adamw_jax state has "
            f"{leaves} leaves; both must describe the same parameters in the same order."
        )
    return indices


def _to_numpy(tensor: Any) -> np.ndarray:
    """A real torch tensor as a float64 NumPy array (exact for every torch float dtype)."""
    if tensor.is_complex():
        raise ValueError(
            "complex parameters cannot be converted: torch keeps separate second moments for the "
            "real and imaginary parts, adamw_jax one for |g|²."
        )
    return tensor.detach().cpu().double().numpy()


def from_torch_state_dict(state_dict: Mapping[str, Any], like: optax.OptState) -> optax.OptState:
    """The adamw_jax state that continues a torch ``Adam``/``AdamW`` run.

    Args:
      state_dict: ``torch_optimizer.state_dict()``.
      like: a fresh state of the adamw_jax optimizer, ``optimizer.init(params)``; its structure,
        shapes and dtypes are kept, its moments and counts are replaced by torch's.

    Returns:
      ``like`` with ``mu``, ``nu`` (and ``nu_max`` under AMSGrad) set from ``exp_avg``,
      ``exp_avg_sq`` (``max_exp_avg_sq``), and every ``count`` set to torch's ``step``.

    Raises:
      ValueError: when the parameters, shapes, steps or AMSGrad setting do not match.
    """
    adam = find_state(like, ScaleByAdamState, transform="scale_by_adam")
    treedef = jax.tree_util.tree_structure(adam.mu)
    indices = _torch_indices(state_dict["param_groups"], treedef.num_leaves)
    per_param = state_dict["state"]
    if not per_param:  # torch creates its state on the first step
        return like
    missing = [i for i in indices if i not in per_param]
    if missing:
        raise ValueError(
            f"torch has no state for parameters {missing} (they never received a gradient) while "
            "others have; adamw_jax keeps one step count for all parameters."
        )
    steps = {float(per_param[i]["step"]) for i in indices}
    if len(steps) != 1:
        raise ValueError(
            f"torch's parameters are at different steps {sorted(steps)}; adamw_jax keeps one step "
            "count for all parameters."
        )
    has_max = "max_exp_avg_sq" in per_param[indices[0]]
    if has_max != (adam.nu_max is not None):
        raise ValueError(
            f"torch state {'has' if has_max else 'lacks'} max_exp_avg_sq but the adamw_jax "
            f"optimizer was built with amsgrad={adam.nu_max is not None}; build it with "
            f"amsgrad={has_max}."
        )

    def moment(field: str) -> Any:
        template = getattr(adam, field)
        if template is None:
            return None
        values = []
        for i, leaf in zip(indices, jax.tree_util.tree_leaves(template)):
            value = _to_numpy(per_param[i][_TORCH_MOMENTS[field]])
            if value.shape != leaf.shape:
                raise ValueError(
                    f"torch {_TORCH_MOMENTS[field]} of parameter {i} has shape {value.shape}, the "
                    f"adamw_jax leaf {leaf.shape}; order the parameter tree's leaves as torch's "
                    "parameters (transpose kernels where the layouts differ)."
                )
            values.append(jnp.asarray(value, leaf.dtype))
        return jax.tree_util.tree_unflatten(treedef, values)

    count = jnp.asarray(min(steps.pop(), np.iinfo(np.int32).max), num.COUNT_DTYPE)
    moments = {field: moment(field) for field in _TORCH_MOMENTS if getattr(adam, field) is not None}
    return optax.tree_utils.tree_set(like, count=count, **moments)


def _to_torch(array: jax.Array) -> Any:
    import torch

    host = np.asarray(jax.device_get(array))
    dtype = getattr(torch, jnp.dtype(array.dtype).name)
    return torch.from_numpy(host.astype(np.float64)).to(dtype)


def to_torch_state_dict(opt_state: optax.OptState, like: Mapping[str, Any]) -> dict[str, Any]:
    """A torch ``Adam``/``AdamW`` ``state_dict`` holding the adamw_jax state, for
    ``torch_optimizer.load_state_dict``.

    Args:
      opt_state: the state of a ``torch_adamw``/``torch_adam`` preset (any chain with one
        ``scale_by_adam``).
      like: ``torch_optimizer.state_dict()`` of the optimizer that will continue; its
        ``param_groups`` (hyperparameters, parameter indices) are copied unchanged.
    """
    import torch

    adam = find_state(opt_state, ScaleByAdamState, transform="scale_by_adam")
    param_groups = copy.deepcopy(list(like["param_groups"]))
    indices = _torch_indices(param_groups, jax.tree_util.tree_structure(adam.mu).num_leaves)
    wants_max = any(group.get("amsgrad", False) for group in param_groups)
    if wants_max != (adam.nu_max is not None):
        raise ValueError(
            f"the torch optimizer has amsgrad={wants_max} but the adamw_jax state was built with "
            f"amsgrad={adam.nu_max is not None}; build both with the same amsgrad."
        )
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    step = float(jax.device_get(adam.count))
    per_param: dict[int, dict[str, Any]] = {
        i: {"step": torch.tensor(step, dtype=step_dtype)} for i in indices
    }
    for field, name in _TORCH_MOMENTS.items():
        moments = getattr(adam, field)
        if moments is None:
            continue
        for i, leaf in zip(indices, jax.tree_util.tree_leaves(moments)):
            per_param[i][name] = _to_torch(leaf)
    return {"state": per_param, "param_groups": param_groups}
