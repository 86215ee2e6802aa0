"""The one-pass CPU kernel behind ``adamw(..., fused=True)`` on XLA:CPU.

XLA:CPU compiles an elementwise AdamW step into three loops per tensor (m, then v, then the
update re-reading both): about 40 bytes of traffic per float32 parameter, and one kernel per
tensor slice. ``cpu_kernel.cc`` does a group's whole step in one loop over its leaves (28 bytes
per parameter: read g, θ, m, v; write θ or u, m, v), split across XLA's intra-op thread pool. It
is registered with the XLA FFI and called from ``adamw_jax.fused`` through ``jax.ffi.ffi_call``.

The kernel is compiled on first use with the system's C++ compiler (``$CXX``, else ``c++``)
against the FFI headers that ship with jaxlib, and cached in ``$ADAMW_JAX_CACHE_DIR`` (default
``~/.cache/adamw_jax``), keyed by the source, jaxlib's version and the CPU's instruction-set flags
(it is built with ``-march=native``); a build takes about 10 s once per machine. Without a
compiler the fused step keeps its XLA formulation (same numbers), with a warning that names the
reason.

When it runs (``enabled()``): the default backend is the CPU, float64 mode is off, the group is
float32 (parameters and gradients) with its moments in any storage format of ``adamw_jax.lowbit``
(``FORMATS``: float32; bfloat16 or float16, to nearest or stochastically; float16 sqrt(v) with a
power-of-two block scale; blockwise int8 codes), stored in the same pass (20 bytes per parameter
with bfloat16 moments, about 16 with int8), and either the process sees one device or
``ADAMW_JAX_NATIVE=1``. Groups of bfloat16/float16 parameters keep the XLA pass, and so does
``update`` (not ``step``) of a leaf with its own buffer unless its moments are float32.
With several devices the XLA pass stays the default because GSPMD cannot split a custom call: it
would gather sharded operands onto every device. ``ADAMW_JAX_NATIVE=0`` turns the kernel off.
The setting is read when a step is traced: a function jitted before a change keeps its choice.

A jitted step made of kernel calls is dispatched asynchronously, as any XLA program of its size:
the call returns futures at once and the pass runs on XLA's threads (see ``_visible_cost``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib.version
import numpy as np

from adamw_jax import _numerics as num
from adamw_jax.lowbit._quantization import (
    SIGNED_CODE,
    UNSIGNED_CODE,
    BlockwiseArray,
    code_constants,
)

try:
    import fcntl
except ImportError:  # Windows: no lock (see _cache_lock)
    fcntl = None

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "NativeKernelError",
    "adam_step",
    "available",
    "build",
    "enabled",
]

ENVIRONMENT_VARIABLE = "ADAMW_JAX_NATIVE"
TARGET_NAME = "adamw_jax_step"
_SOURCE = Path(__file__).with_name("cpu_kernel.cc")
_FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    # IEEE float32 arithmetic, rounded after every operation (no contracted multiply-adds,
    # exact division and sqrt); errno and trap flags are not kept, so the loop vectorizes.
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
)
_lock = threading.Lock()


class NativeKernelError(RuntimeError):
    """The CPU kernel could not be compiled or loaded (the message says why)."""


_CACHE_VARIABLE = "ADAMW_JAX_CACHE_DIR"


def _cache_dir() -> Path:
    """Where the built kernel is kept, read at each call: ``$ADAMW_JAX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/adamw_jax``, else ``~/.cache/adamw_jax``."""
    if _CACHE_VARIABLE in os.environ:
        return Path(os.environ[_CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamw_jax"


def _compiler() -> str:
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise NativeKernelError(
            f"no C++ compiler found (looked for {name!r}; set CXX or install g++/clang++)"
        )
    return path


def _cpu_signature() -> bytes:
    """What the machine's CPU offers (its ISA flags on Linux): part of the cache key, since the
    kernel is built for the CPU it runs on (``-march=native``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    return (platform.machine() + platform.processor()).encode()


def _library_path() -> Path:
    """The cached library's path, keyed by the source, jaxlib, the CPU and the flags."""
    key = hashlib.sha256(
        b"\0".join(
            [
                _SOURCE.read_bytes(),
                jaxlib.version.__version__.encode(),
                _cpu_signature(),
                " ".join(_FLAGS).encode(),
            ]
        )
    ).hexdigest()[:16]
    return _cache_dir() / f"adamw_jax_cpu_kernel_{key}.so"


def _unwritable(directory: Path, error: OSError) -> NativeKernelError:
    return NativeKernelError(
        f"the kernel cache {directory} is not writable ({error}); set {_CACHE_VARIABLE} to a "
        f"writable directory, e.g. `export {_CACHE_VARIABLE}=/tmp/adamw_jax`"
    )


@contextlib.contextmanager
def _cache_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the cache directory itself while building in it.

    Concurrent first uses wait for one build instead of each compiling; the lock needs no
    write permission, leaves no file behind and is released when its holder exits, crashed or
    not. Where there is no such lock (Windows; NFS refuses an exclusive lock on a directory),
    processes build side by side: the atomic rename in ``_compile`` still keeps every cached
    library whole.
    """
    if fcntl is None:
        yield
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            pass  # no lock on this file system: build unlocked (see above)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _run_compiler(output: Path) -> None:
    """Compile the kernel into ``output``: for this CPU, else for the generic target."""
    compiler = _compiler()
    for target in (["-march=native"], []):
        command = [
            compiler,
            *_FLAGS,
            *target,
            "-isystem",
            jax.ffi.include_dir(),
            str(_SOURCE),
            "-o",
            str(output),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise NativeKernelError(f"running {compiler} failed: {error}") from error
        if done.returncode == 0:
            return
    raise NativeKernelError(
        f"compiling {_SOURCE.name} failed ({' '.join(command)}):\n{done.stderr[-2000:]}"
    )


def _compile(library: Path, broken: os.stat_result | None = None) -> Path:
    """Build ``library`` under the cache lock, unless another process built it meanwhile.

    ``broken``: the cached file that failed to load; deleted and rebuilt if it is still there.
    """
    directory = library.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(directory, error) from error
    with _cache_lock(directory):
        if library.exists():
            if broken is None or not os.path.samestat(library.stat(), broken):
                return library  # built by another process while this one waited
            try:
                library.unlink()
            except OSError as error:
                raise _unwritable(directory, error) from error
        try:
            # Build to a private name, then rename: no process ever loads a partial file.
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                partial = Path(scratch) / library.name
                _run_compiler(partial)
                os.replace(partial, library)
        except OSError as error:
            raise _unwritable(directory, error) from error
    return library


def build() -> Path:
    """Compile the kernel if it is not cached yet; return the shared library's path.

    The kernel is built for this CPU (``-march=native``: AVX2 doubles the speed of its square
    roots and divides), or for the generic target where the compiler has no such option. It is
    cached in ``$ADAMW_JAX_CACHE_DIR`` (default ``~/.cache/adamw_jax``); processes starting
    together wait for one build (a lock on that directory).

    Raises:
      NativeKernelError: no compiler, the compilation failed (with the compiler's output), or
        the cache directory is not writable (the message names ``ADAMW_JAX_CACHE_DIR``).
    """
    library = _library_path()
    if library.exists():
        return library
    return _compile(library)


def _check_whole(library: Path) -> None:
    """Raise OSError if ``library`` is an ELF file cut short: it ends before its section-header
    table, the last part a linker writes. The loader may map such a file and crash the
    process (SIGBUS) on touching the missing pages, rather than fail with an error."""
    with library.open("rb") as file:
        header = file.read(64)
    if header[:4] != b"\x7fELF":
        return  # not ELF (macOS): the loader judges
    wide, order = header[4:5] == b"\x02", "<" if header[5:6] == b"\x01" else ">"
    layout = f"{order}{'Q' if wide else 'I'}"  # e_shoff, then e_shentsize, e_shnum
    offsets = (0x28, 0x3A) if wide else (0x20, 0x2E)
    size = library.stat().st_size
    if len(header) < (64 if wide else 52):
        raise OSError(f"{library} is truncated: {size} bytes, shorter than its ELF header")
    (table,) = struct.unpack_from(layout, header, offsets[0])
    entry, count = struct.unpack_from(f"{order}HH", header, offsets[1])
    if size < table + entry * count:
        raise OSError(
            f"{library} is truncated: {size} bytes, its ELF header says {table + entry * count}"
        )


def _entry_point(library: Path) -> Callable[..., Any]:
    """The kernel's FFI handler in ``library`` (OSError or AttributeError if it does not load)."""
    _check_whole(library)
    return ctypes.cdll.LoadLibrary(str(library)).AdamwJaxStep


def _load() -> Callable[..., Any]:
    """Build if needed and load the kernel; a cached library that does not load (truncated,
    foreign) is deleted and rebuilt once."""
    library = build()
    try:
        return _entry_point(library)
    except (OSError, AttributeError) as error:
        failure = error
    try:
        broken = library.stat()
    except FileNotFoundError:  # another process is rebuilding it
        broken = None
    try:
        return _entry_point(_compile(library, broken))
    except (NativeKernelError, OSError, AttributeError) as error:
        raise NativeKernelError(
            f"the cached {library} did not load ({failure}); deleting and rebuilding it "
            f"failed too: {error}"
        ) from error


@functools.cache
def _register() -> str | None:
    """Build, load and register the kernel once per process; the reason it failed, or None."""
    try:
        jax.ffi.register_ffi_target(TARGET_NAME, jax.ffi.pycapsule(_load()), platform="cpu")
    except (NativeKernelError, OSError, AttributeError) as error:
        warnings.warn(
            f"adamw_jax: the native CPU kernel is unavailable, fused=True keeps its "
            f"XLA formulation (same numbers, slower): {error}",
            stacklevel=3,
        )
        return str(error)
    return None


def available() -> bool:
    """Whether the kernel is built and registered (builds it on the first call)."""
    with _lock:
        return _register() is None


def enabled() -> bool:
    """Whether a fused step traced now runs the kernel (see the module docstring)."""
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower()
    if setting in ("0", "false", "off", "no"):
        return False
    if setting not in ("1", "true", "on", "yes", "auto", ""):
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE}={setting!r}: use 1 (always on CPU), 0 (never) or leave it "
            "unset (auto: one CPU device)."
        )
    if jax.default_backend() != "cpu" or num.x64_enabled():
        return False
    if setting in ("auto", "") and jax.device_count() != 1:
        return False
    return available()


_SCALAR_COPIES = 128


def _visible_cost(scalars: jax.Array) -> jax.Array:
    """``scalars`` unchanged, through ``_SCALAR_COPIES·len(scalars)`` flops that XLA can see.

    XLA:CPU runs a program it estimates at under 1000 flops inline, on the calling thread, and
    its cost model counts a custom call as zero. A jitted step made only of kernel calls would
    therefore be synchronous: the Python thread would wait for the whole pass instead of
    getting futures back at once, as it does from any XLA program of this size. The minimum
    over identical copies is exact (NaN and -0.0 included) and XLA does not fold it away.
    """
    return jnp.min(jnp.broadcast_to(scalars, (_SCALAR_COPIES, *scalars.shape)), axis=0)


FORMATS = ("float32", "bfloat16", "float16", "int8 blocks", "uint8 blocks", "float16 blocks")
"""The moment storage formats the kernel takes, in the order of its ``Format`` enum: plain
float32, bfloat16 and float16 arrays, and ``lowbit.BlockwiseArray`` of int8 codes (m), uint8
codes of sqrt(v), or float16 sqrt(v) with power-of-two scales."""


def moment_format(stored: Any) -> int | None:
    """The kernel's format number of one stored moment buffer, or None if it has none."""
    if isinstance(stored, BlockwiseArray):
        values = np.dtype(stored.values.dtype)
        name = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8"}.get(values, str(values))
        name += " blocks"
    else:
        name = str(np.dtype(stored.dtype))
    return FORMATS.index(name) if name in FORMATS else None


@functools.cache
def _codes() -> np.ndarray:
    """The ``codes`` attribute: per 8-bit code (signed, then unsigned) its arithmetic-index
    constants (``_quantization.code_constants``, padded to 8 decades) and its 256-entry decode
    table indexed by the stored byte (an int8 code by its two's-complement bits, ``-128``
    decoding as ``jnp``'s wrapped index does)."""
    parts = []
    for code in (SIGNED_CODE, UNSIGNED_CODE):
        constants = code_constants(signed=code[0] < 0)
        for name in ("threshold", "count", "denominator", "high", "low"):
            parts.append(np.resize(constants[name], 8) * (np.arange(8) < constants[name].size))
        parts.append(constants["ninth"])
        byte = np.arange(256)
        parts.append(code[(byte - 256 * (byte > 127) + 127) % code.size] if code[0] < 0 else code)
    return np.concatenate(parts).astype(np.float32)


def _buffers(stored: Any) -> list[jax.Array]:
    return list(stored) if isinstance(stored, BlockwiseArray) else [stored]


def adam_step(
    scalars: jax.Array,
    moments: Sequence[Any],
    params: Sequence[jax.Array],
    grads: Sequence[jax.Array],
    offsets: np.ndarray,
    *,
    amsgrad: bool,
    nesterov: bool,
    maximize: bool,
    decayed: bool,
    write_params: bool,
    moments_only: bool = False,
    seeds: jax.Array | None = None,
) -> tuple[list[jax.Array], tuple[Any, ...]]:
    """One group's step by the kernel: ``(outputs, moments)`` as ``adamw_jax.fused``'s XLA pass.

    ``scalars``: float32[12] in ``_group_pass.StepScalars`` order; ``moments``: ``(m, v)`` or
    ``(m, v, v̄)`` stored buffers, each of a ``FORMATS`` format (a ``BlockwiseArray`` for the
    block formats; its leaves start on block boundaries), updated in place (aliased);
    ``seeds``: uint32[3], the stochastic-rounding seed of each moment buffer (``None``: round
    to nearest); ``params``: the leaves' parameters when decayed or written, else empty;
    ``grads``: the leaves' float32 gradients, leaf ``i`` starting at element ``offsets[i]`` of
    the moments. ``outputs``: per leaf ``u``, or ``θ + u`` written over ``θ`` with
    ``write_params``; none with ``moments_only`` (float32 moments alone: 20 bytes per
    parameter, neither decayed nor written).
    """
    if not available():
        raise NativeKernelError(f"the native kernel is unavailable: {_register()}")
    buffers = [b for x in moments for b in _buffers(x)]
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in buffers]
    if not moments_only:
        shapes += [jax.ShapeDtypeStruct(g.shape, np.float32) for g in grads]
    aliases = {2 + i: i for i in range(len(buffers))}
    if write_params:
        aliases.update({2 + len(buffers) + j: len(buffers) + j for j in range(len(params))})
    call = jax.ffi.ffi_call(
        TARGET_NAME, shapes, input_output_aliases=aliases, vmap_method="sequential"
    )
    stochastic = seeds is not None
    results = call(
        _visible_cost(scalars),
        jnp.zeros(3, jnp.uint32) if seeds is None else seeds,
        *buffers,
        *params,
        *grads,
        offsets=offsets,
        formats=np.array([moment_format(x) for x in moments], np.int64),
        codes=_codes(),
        stochastic=stochastic,
        amsgrad=amsgrad,
        nesterov=nesterov,
        maximize=maximize,
        decayed=decayed,
        write_params=write_params,
        moments_only=moments_only,
    )
    new, at = [], 0
    for x in moments:
        if isinstance(x, BlockwiseArray):
            new.append(BlockwiseArray(results[at], results[at + 1]))
            at += 2
        else:
            new.append(results[at])
            at += 1
    return list(results[len(buffers) :]), tuple(new)
