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


# CDP_TEST_CPU_REPORT=<file>: write every test's CPU seconds (setup + call + teardown, this
# process plus the scripts it ran and waited for) to <file>, dearest first, to keep the default
# suite under its CPU budget (see the README).
_CPU_REPORT = os.environ.get("CDP_TEST_CPU_REPORT")
_cpu_seconds: dict[str, tuple[float, float]] = {}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import time

    start, children = time.process_time(), _children_cpu()
    yield
    _cpu_seconds[item.nodeid] = (time.process_time() - start, _children_cpu() - children)


def pytest_sessionfinish(session, exitstatus):
    """Write the CPU report. Under pytest-xdist each worker writes its tests' seconds to
    ``<file>.<worker>`` and the controller, which runs none, merges those into ``<file>``."""
    if not _CPU_REPORT:
        return
    import json

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None:
        Path(f"{_CPU_REPORT}.{worker}").write_text(json.dumps(_cpu_seconds))
        return
    for part in sorted(Path(_CPU_REPORT).parent.glob(Path(_CPU_REPORT).name + ".gw*")):
        _cpu_seconds.update({k: tuple(v) for k, v in json.loads(part.read_text()).items()})
        part.unlink()
    if _cpu_seconds:
        rows = sorted(_cpu_seconds.items(), key=lambda kv: -sum(kv[1]))
        lines = [f"{own + sub:8.2f}  {name}" + (f"  (scripts {sub:.2f})" if sub else "")
                 for name, (own, sub) in rows]
        own, sub = (sum(v[i] for v in _cpu_seconds.values()) for i in (0, 1))
        lines.append(f"{own + sub:8.2f}  total in tests ({own:.2f} in the test processes, "
                     f"{sub:.2f} scripts)")
        Path(_CPU_REPORT).write_text("\n".join(lines) + "\n")
