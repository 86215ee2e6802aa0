"""Test session set-up: 8 host devices for the multi-device tests, deterministic hypothesis, and
a temporary cache for the native kernel (never the user's ``~/.cache/adamw_jax``)."""

import os
import shutil
import tempfile

import pytest

# Must precede the first `import jax` anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")

_KERNEL_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """The main process makes the session's kernel cache: pytest-xdist's workers, started after
    this hook, inherit ``ADAMW_JAX_CACHE_DIR``, so they share the directory and build once."""
    if not hasattr(config, "workerinput"):  # not an xdist worker
        directory = tempfile.mkdtemp(prefix="adamw_jax_kernel_cache_")
        config.stash[_KERNEL_CACHE] = os.environ["ADAMW_JAX_CACHE_DIR"] = directory


def pytest_unconfigure(config: pytest.Config) -> None:
    if _KERNEL_CACHE in config.stash:
        shutil.rmtree(config.stash[_KERNEL_CACHE], ignore_errors=True)
