"""The native kernel's cache: a cached library that does not load is deleted and rebuilt once,
an unwritable cache names ADAMW_JAX_CACHE_DIR, and processes starting together build once.

A stand-in compiler (``$CXX``) logs each build and "compiles" by copying a given file (the
session's real library, or a broken one), so the tests count builds without a 10 s compile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adamw_jax import native

STAND_IN_COMPILER = """\
#!/bin/sh
echo build >> "$BUILD_LOG"
sleep "${BUILD_SECONDS:-0}"
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then cp "$KERNEL" "$2"; fi
  shift
done
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache directory, with the stand-in compiler copying the session's real kernel."""
    kernel = native.build()  # the session's cache (tests/conftest.py), built for real
    compiler = tmp_path / "stand_in_cxx"
    compiler.write_text(STAND_IN_COMPILER)
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("KERNEL", str(kernel))
    monkeypatch.setenv("BUILD_LOG", str(tmp_path / "builds.log"))
    monkeypatch.setenv("ADAMW_JAX_CACHE_DIR", str(tmp_path / "cache"))  # read at each call
    return tmp_path / "cache"


def builds(cache: Path) -> int:
    log = cache.parent / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def truncated_copy(kernel: Path, destination: Path, size: int = 4096) -> Path:
    """The first ``size`` bytes of ``kernel``, as a copy or a write cut short leaves them."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(kernel.read_bytes()[:size])
    return destination


# 2: not even the ELF magic (the loader's "file too short"); 4 and 40: the magic, a partial
# header; 4096: the whole header and the first pages, which dlopen would map and crash on.
@pytest.mark.parametrize("size", [2, 4, 40, 4096])
def test_a_cached_library_that_does_not_load_is_deleted_rebuilt_and_loaded(cache, size):
    library = truncated_copy(Path(os.environ["KERNEL"]), native._library_path(), size)
    assert library.parent == cache
    with pytest.raises(OSError):  # what every process hit before, and kept hitting
        native._entry_point(library)
    assert callable(native._load())
    assert builds(cache) == 1
    assert library.read_bytes() == Path(os.environ["KERNEL"]).read_bytes()
    assert [p.name for p in cache.iterdir()] == [library.name]
    native._load()  # loads the rebuilt library: no second build
    assert builds(cache) == 1


def test_a_rebuild_that_does_not_load_either_is_reported_once(cache, monkeypatch):
    broken = truncated_copy(Path(os.environ["KERNEL"]), cache.parent / "broken.so")
    monkeypatch.setenv("KERNEL", str(broken))  # the "compiler" now writes a broken library too
    truncated_copy(broken, native._library_path())
    with pytest.raises(native.NativeKernelError, match="deleting and rebuilding it failed too"):
        native._load()
    assert builds(cache) == 1  # rebuilt once, not in a loop


def test_an_unwritable_cache_names_the_variable_that_moves_it(tmp_path):
    """As root, file permissions cannot make a directory read-only; a HOME beneath a regular
    file cannot be written by anyone, and takes the same path (mkdir fails with an OSError)."""
    (tmp_path / "file").write_text("")
    script = textwrap.dedent("""
        import warnings
        from adamw_jax import native
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not native.available()
        print(*[str(w.message) for w in caught if "native CPU kernel" in str(w.message)])
    """)
    env = {
        k: v for k, v in os.environ.items() if k not in ("ADAMW_JAX_CACHE_DIR", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(tmp_path / "file" / "home")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"the kernel cache {tmp_path}/file/home/.cache/adamw_jax is not writable" in done.stdout
    assert "set ADAMW_JAX_CACHE_DIR to a writable directory" in done.stdout
    assert "export ADAMW_JAX_CACHE_DIR=" in done.stdout


def test_processes_starting_together_on_an_empty_cache_build_once(cache):
    """Both processes call ``build()`` within milliseconds (they wait for each other first);
    the build takes 2 s, so without the lock both would find no library and compile."""
    ready = cache.parent / "ready"
    ready.mkdir()
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from adamw_jax import native
        ready = Path(sys.argv[1])
        (ready / sys.argv[2]).touch()
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        print(native.build())
    """)
    env = dict(os.environ, BUILD_SECONDS="2")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ready), str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    assert {out.strip() for out, _ in outputs} == {str(native._library_path())}
    assert builds(cache) == 1
    assert [p.name for p in cache.iterdir()] == [native._library_path().name]


def test_a_file_system_without_locks_still_builds(cache, monkeypatch):
    """NFS refuses an exclusive flock on a directory opened read-only: the build goes on."""

    class Unlockable:
        LOCK_EX = 2

        @staticmethod
        def flock(descriptor: int, operation: int) -> None:
            raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(native, "fcntl", Unlockable)
    assert native.build() == native._library_path()
    assert builds(cache) == 1
