"""Every public import path of the 0.1 layout keeps working after the move into wings
(issue 17): ``aw.<name>`` for each name of ``aw.__all__``, ``from adamw_jax.<module> import
<name>`` for each public module and name, ``import adamw_jax.flax``, and the command line. The
old paths give the wing's module object itself, so classes and states are one object; the old
private paths (``adamw_jax._group_pass``, ...) are gone, not re-exported."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import adamw_jax as aw

# Each public module of the 0.1 layout and the public names it defined (taken from 0.1's files).
PUBLIC_PATHS = {
    "accumulation": ["AccumulateGradientsState", "accumulate_gradients", "micro_step_schedule"],
    "ademamix": [
        "ScaleByAdemamixState",
        "ademamix",
        "ademamix_alpha_schedule",
        "ademamix_b3_schedule",
        "scale_by_ademamix",
    ],
    "adopt": ["ScaleByAdoptState", "adopt", "scale_by_adopt"],
    "alias": ["WEIGHT_DECAY_MODES", "adam", "adamw"],
    "cautious": ["MIN_KEPT_FRACTION", "add_cautious_decayed_weights", "scale_by_cautious_mask"],
    "clipping": [
        "ClipState",
        "clip_by_global_norm",
        "clip_by_norm",
        "clip_by_value",
        "global_norm",
    ],
    "ema": ["ParamEmaState", "ema_params", "param_ema"],
    "flat": ["FlatLayout", "decay_mask", "flatten", "on_flat", "unflatten"],
    "flax": ["Optimizer", "TrainState"],
    "fused": ["FusedAdamState", "FusedTransformation", "OWN_BUFFER_SIZE", "fused_adam_family"],
    "hyperparams": [
        "DEFAULT_RUNTIME",
        "InjectHyperparamsState",
        "current_hyperparams",
        "current_learning_rate",
        "inject_hyperparams",
        "set_hyperparams",
    ],
    "kahan": ["KahanSummationState", "kahan_compensation_bytes", "kahan_summation"],
    "learning_rate": ["ScaleByLearningRateState", "scale_by_learning_rate"],
    "loss_scaling": [
        "LossScaleState",
        "MAX_SCALE",
        "MIN_SCALE",
        "SkipNonfiniteState",
        "SkippedSteps",
        "all_finite",
        "current_loss_scale",
        "loss_scaling",
        "skip_nonfinite",
        "skipped_steps",
    ],
    "loss_spikes": ["MONITORS", "SkipLossSpikesState", "skip_loss_spikes", "skipped_spikes"],
    "lowbit": [
        "BLOCK_SIZE",
        "BlockwiseArray",
        "FIRST_MOMENT_STREAM",
        "LowPrecisionParamsState",
        "MAX_SECOND_MOMENT_STREAM",
        "MIN_BLOCKWISE_SIZE",
        "MomentStorage",
        "PARAMS_STREAM",
        "SECOND_MOMENT_STREAM",
        "add_and_round",
        "block_count",
        "decode_blocks",
        "dynamic_code",
        "encode_blocks",
        "low_precision_params",
        "moment_storage",
        "round_to_dtype",
        "state_bytes",
        "step_keys",
    ],
    "masks": ["exclude_from_weight_decay", "parameter_names"],
    "moments": ["EPS_MODES", "ScaleByAdamState", "scale_by_adam"],
    "native": [
        "ENVIRONMENT_VARIABLE",
        "NativeKernelError",
        "adam_step",
        "available",
        "build",
        "enabled",
    ],
    "plateau": ["ReduceOnPlateauState", "reduce_on_plateau"],
    "presets": [
        "from_torch_state_dict",
        "keras_adamw",
        "optimi_stable_adamw",
        "to_torch_state_dict",
        "torch_adam",
        "torch_adamw",
    ],
    "rms_clip": ["clip_by_update_rms"],
    "schedule_free": ["ScheduleFreeAdamWState", "schedule_free_adamw", "schedule_free_eval_params"],
    "schedules": [
        "Schedule",
        "constant_schedule",
        "cosine_decay_schedule",
        "cosine_onecycle_schedule",
        "exponential_decay",
        "inverse_sqrt_schedule",
        "inverse_time_decay_schedule",
        "join_schedules",
        "linear_onecycle_schedule",
        "linear_schedule",
        "piecewise_constant_schedule",
        "piecewise_interpolate_schedule",
        "plot_schedule",
        "polynomial_schedule",
        "sgdr_schedule",
        "step_decay_schedule",
        "warmup_constant_schedule",
        "warmup_cosine_decay_schedule",
        "warmup_exponential_decay_schedule",
        "warmup_stable_decay_schedule",
    ],
    "sharding": ["state_shardings"],
    "torch_interop": ["from_torch_state_dict", "to_torch_state_dict"],
    "updates": ["apply_updates", "update_and_apply"],
    "weight_decay": ["WeightDecayState", "add_decayed_weights", "decoupled_weight_decay"],
}

# Where each old module lives now.
WINGS = {
    "accumulation": "transforms.accumulation",
    "ademamix": "variants.ademamix",
    "adopt": "variants.adopt",
    "alias": "optimizers",
    "cautious": "variants.cautious",
    "clipping": "transforms.clipping",
    "ema": "transforms.ema",
    "flat": "fused.flat",
    "flax": "interop.flax",
    "fused": "fused",
    "hyperparams": "transforms.hyperparams",
    "kahan": "lowbit.kahan",
    "learning_rate": "transforms.learning_rate",
    "loss_scaling": "transforms.loss_scaling",
    "loss_spikes": "transforms.loss_spikes",
    "lowbit": "lowbit",
    "masks": "transforms.masks",
    "moments": "transforms.moments",
    "native": "fused.native",
    "plateau": "transforms.plateau",
    "presets": "interop.presets",
    "rms_clip": "variants.rms_clip",
    "schedule_free": "variants.schedule_free",
    "schedules": "schedules",
    "sharding": "sharding",
    "torch_interop": "interop.torch_optim",
    "updates": "updates",
    "weight_decay": "transforms.weight_decay",
}

# Private modules of the 0.1 layout: moved, and deliberately not importable under the old name.
OLD_PRIVATE = [
    "_char_transformer",
    "_cpu_kernel",
    "_demo",
    "_flat_layout",
    "_group_pass",
    "_masking",
    "_presets_variants",
    "_quantization",
    "_schedule_arguments",
    "_schedules_decay",
    "_schedules_piecewise",
    "_schedules_plot",
    "_schedules_warmup",
    "_wrappers",
]


def test_every_name_of_all_is_an_attribute():
    assert len(aw.__all__) == len(set(aw.__all__))
    for name in aw.__all__:
        assert getattr(aw, name) is not None, name


@pytest.mark.parametrize("old", sorted(PUBLIC_PATHS))
def test_old_public_module_paths_import_the_wing_module(old):
    module = importlib.import_module(f"adamw_jax.{old}")
    assert module is importlib.import_module(f"adamw_jax.{WINGS[old]}")
    if old in ("adopt", "ademamix", "loss_scaling"):  # as in 0.1: aw.<name> is the function
        assert callable(getattr(aw, old)) and getattr(aw, old) is getattr(module, old)
    else:
        assert getattr(aw, old) is module  # aw.<module> too, also for those outside __all__
    for name in PUBLIC_PATHS[old]:
        namespace: dict = {}
        exec(f"from adamw_jax.{old} import {name}", namespace)
        assert namespace[name] is getattr(module, name), (old, name)


@pytest.mark.parametrize("name", ["schedules", "flat", "lowbit", "presets", "native", "sharding"])
def test_the_documented_modules_are_attributes_of_the_package(name):
    module = getattr(aw, name)
    assert module is importlib.import_module(f"adamw_jax.{name}")
    exported = getattr(module, "__all__", PUBLIC_PATHS[name])
    assert set(PUBLIC_PATHS[name]) <= set(exported) | set(dir(module))


def test_importing_an_old_path_keeps_the_function_of_the_same_name():
    done = _fresh_python(
        "import adamw_jax as aw, adamw_jax.adopt, adamw_jax.loss_scaling, adamw_jax.ademamix\n"
        "import importlib; importlib.import_module('adamw_jax.moments')\n"
        "assert callable(aw.adopt) and callable(aw.loss_scaling) and callable(aw.ademamix)\n"
        "assert aw.moments.scale_by_adam is aw.scale_by_adam"
    )
    assert done.returncode == 0, done.stderr


def test_one_class_under_both_names():
    from adamw_jax.moments import ScaleByAdamState

    from adamw_jax.transforms.moments import ScaleByAdamState as Same

    assert ScaleByAdamState is Same is aw.ScaleByAdamState


@pytest.mark.parametrize("old", OLD_PRIVATE)
def test_old_private_paths_are_not_shimmed(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"adamw_jax.{old}")
    with pytest.raises(AttributeError):
        getattr(aw, old)


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_adamw_jax_does_not_import_flax_until_asked():
    done = _fresh_python(
        "import sys, adamw_jax\n"
        "assert 'flax' not in sys.modules, 'flax imported eagerly'\n"
        "import adamw_jax.flax\n"
        "assert 'flax' in sys.modules\n"
        "assert adamw_jax.flax is sys.modules['adamw_jax.interop.flax']\n"
        "from adamw_jax.flax import Optimizer, TrainState\n"
        "print(Optimizer.__module__)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "adamw_jax.interop.flax"


def test_the_command_line_still_runs():
    done = subprocess.run(
        [sys.executable, "-m", "adamw_jax", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "--steps" in done.stdout
