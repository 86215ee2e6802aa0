"""Storage in fewer bytes, arithmetic in float32: ``storage.py`` (bf16/f16 and blockwise 8-bit
moments, stochastic rounding, bf16 parameters with optional float32 master weights),
``_quantization.py`` (the codes and rounding primitives), ``kahan.py`` (Kahan-compensated bf16
parameters).
"""

from adamw_jax.lowbit import kahan
from adamw_jax.lowbit.storage import (
    BLOCK_SIZE,
    FIRST_MOMENT_STREAM,
    MAX_SECOND_MOMENT_STREAM,
    MIN_BLOCKWISE_SIZE,
    PARAMS_STREAM,
    SECOND_MOMENT_STREAM,
    BlockwiseArray,
    LowPrecisionParamsState,
    MomentStorage,
    add_and_round,
    block_count,
    decode_blocks,
    dynamic_code,
    encode_blocks,
    low_precision_params,
    moment_storage,
    round_to_dtype,
    state_bytes,
    step_keys,
)

__all__ = [
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
    "kahan",
    "low_precision_params",
    "moment_storage",
    "round_to_dtype",
    "state_bytes",
    "step_keys",
]
