"""Module paths of earlier releases that now live in a wing keep importing.

``import adamw_jax.moments``, ``from adamw_jax.presets import torch_adamw`` or
``import adamw_jax.flax`` load the wing's module (``adamw_jax.transforms.moments``, ...) and bind
it under the old name too: one module object, so its classes and states are the same objects
under both names. The wings' modules are imported with the package and bound at once
(``bind_imported``), so ``aw.adopt`` and ``aw.loss_scaling`` stay the functions of those names;
``adamw_jax.flax`` (the documented path of the Flax drop-ins: it imports Flax) is found on first
use by a finder at the end of ``sys.meta_path``. Only public (non-underscore) paths are kept.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

PACKAGE = __name__.rpartition(".")[0]

# old path (under adamw_jax.) -> the module that holds it now
MOVED_MODULES: dict[str, str] = {
    "accumulation": "transforms.accumulation",
    "ademamix": "variants.ademamix",
    "adopt": "variants.adopt",
    "alias": "optimizers",
    "cautious": "variants.cautious",
    "clipping": "transforms.clipping",
    "ema": "transforms.ema",
    "flat": "fused.flat",
    "flax": "interop.flax",
    "hyperparams": "transforms.hyperparams",
    "kahan": "lowbit.kahan",
    "learning_rate": "transforms.learning_rate",
    "loss_scaling": "transforms.loss_scaling",
    "loss_spikes": "transforms.loss_spikes",
    "masks": "transforms.masks",
    "moments": "transforms.moments",
    "native": "fused.native",
    "plateau": "transforms.plateau",
    "presets": "interop.presets",
    "rms_clip": "variants.rms_clip",
    "schedule_free": "variants.schedule_free",
    "torch_interop": "interop.torch_optim",
    "weight_decay": "transforms.weight_decay",
}


def _new_path(fullname: str) -> str | None:
    """Where the module of the old path ``adamw_jax.<name>`` lives now, or None if it is not one."""
    package, _, name = fullname.partition(".")
    if package != PACKAGE or name not in MOVED_MODULES:
        return None
    return f"{PACKAGE}.{MOVED_MODULES[name]}"


def import_moved(fullname: str) -> ModuleType | None:
    """The module an old path ``adamw_jax.<name>`` names now (imported), or None if it names none."""
    new = _new_path(fullname)
    if new is None:
        return None
    module = importlib.import_module(new)
    sys.modules[fullname] = module
    return module


def bind_imported() -> None:
    """Bind every old path whose module is imported already (all but ``flax``) in ``sys.modules``."""
    for name, new in MOVED_MODULES.items():
        module = sys.modules.get(f"{PACKAGE}.{new}")
        if module is not None:
            sys.modules.setdefault(f"{PACKAGE}.{name}", module)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the import system for the old paths only, after every other finder found none."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib's protocol)
        if _new_path(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return import_moved(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its wing's name."""


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
