"""Strict numerics for every test: no silent rank promotion (a ``(B,)`` time vector must not
broadcast against ``(B, d)`` actions by accident)."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# The scripts the tests run in subprocesses (experiments/*.py, python -c ...) import this
# checkout's cdp_jax, not whichever copy is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture
def x64():
    """Run a test body in float64 (for references), restoring the previous setting after."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A private Minari datasets root (``MINARI_DATASETS_PATH``) for a whole test module; nothing
    touches ``~/.minari``."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


def _share_compilations_within_the_run():
    """XLA compilation is most of this suite's CPU time, and tests re-jit the same programs through
    fresh function objects (every training run and resume, patched agents), which JAX's in-memory
    cache keys by function identity. Its persistent cache keys by the program itself; pointed at a
    fresh directory per session (nothing carries over between runs; the scripts the tests start
    share it through the environment). A cache directory set by the user is kept as it is."""
    import atexit
    import os
    import shutil
    import tempfile

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    path = tempfile.mkdtemp(prefix="cdp-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    settings = {"jax_compilation_cache_dir": path,
                "jax_persistent_cache_min_compile_time_secs": 0.2,  # not the tiny eager ops
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)


def _unoptimised_cpu_codegen():
    """LLVM's optimisation of the generated CPU code is about a quarter of the compile time, and
    the tests run tiny programs once: ``--xla_backend_optimization_level=0`` (the HLO programs, and
    so the numerics the tests check, are unchanged; the machine code is just slower). Set by the
    tests' own process and inherited by the scripts they start; an ``XLA_FLAGS`` that already
    names a level is kept, e.g. ``XLA_FLAGS=--xla_backend_optimization_level=2`` to test the
    optimised code."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


_share_compilations_within_the_run()
_unoptimised_cpu_codegen()
