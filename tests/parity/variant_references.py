"""The reference optimizers of the AdamW variants, run in torch on the gradient streams of
``test_torch_parity``: loaders for timm's optimizer files (the ``timm`` package import needs
torchvision, so its ``optim/*.py`` files are loaded alone: they import only torch and their
siblings ``_helpers``/``_types``) and a driver that steps any torch optimizer."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Sequence

import numpy as np
import torch

from parity.test_torch_parity import FACTORS, GRADS, KEYS, PARAMS, run_torch

_TIMM_OPTIM = "_timm_optim_files"


def timm_optim(module: str) -> types.ModuleType:
    """``timm/optim/<module>.py`` imported without ``timm/__init__.py`` (which imports
    torchvision): a stand-in package holds the ``optim`` folder, so relative imports work."""
    if _TIMM_OPTIM not in sys.modules:
        spec = importlib.util.find_spec("timm")
        package = types.ModuleType(_TIMM_OPTIM)
        package.__path__ = [f"{spec.submodule_search_locations[0]}/optim"]
        sys.modules[_TIMM_OPTIM] = package
    return importlib.import_module(f"{_TIMM_OPTIM}.{module}")


def torch_run(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    dtype: torch.dtype = torch.float64,
    *,
    scheduled: bool = False,
    params: dict[str, np.ndarray] = PARAMS,
    grads: Sequence[dict[str, np.ndarray]] = GRADS,
) -> list[dict[str, np.ndarray]]:
    """The params after each step of ``make(tensors)`` fed ``grads`` (``scheduled``: the
    learning rate times ``test_torch_parity``'s warmup-cosine factor, through ``LambdaLR``)."""
    tensors = [torch.tensor(params[k], dtype=dtype, requires_grad=True) for k in KEYS]
    optimizer = make(tensors)
    scheduler = (
        torch.optim.lr_scheduler.LambdaLR(optimizer, FACTORS.__getitem__) if scheduled else None
    )
    return run_torch(tensors, optimizer, grads, scheduler)
