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


# Deep checks that run with `-m slow` only, to bring the default run (what CI runs) towards its
# budget of 5 CPU-minutes and 3 wall minutes on the 2-core machine (README, "The two commands",
# gives where it stands). Each is an
# end-to-end duplicate or a costlier variant of a check that stays in the default run: a study
# cell end to end (the grid, resume and collection are tested without training), the benchmark
# and script runs whose logic has fake-data tests, the second and later parametrisations of a
# closed-form check, the multi-seed twin of a single-seed check. Chosen from the CPU report
# (CDP_TEST_CPU_REPORT), dearest first; `python -m pytest -q -m slow` runs them.
SLOW_IN_THE_DEFAULT_RUN = (
    "tests/test_studies.py::test_one_cell_end_to_end",
    "tests/test_fql_side_by_side.py::test_quick_run_of_cdp_jax_rows_alone",
    "tests/test_agents.py::test_weight_zero_update_is_exactly_vanilla",
    "tests/test_agents.py::test_weight_zero_is_exactly_vanilla[cdp_jax.agents.dbc-overrides2-<lambda>]",
    "tests/test_locomotion.py::test_selection_follows_d4rl",
    "tests/test_locomotion.py::test_a_shipped_record_regenerates_a_resumed_run_bit_for_bit",
    "tests/test_fast_penalty.py::test_fast_penalty_and_gradient_are_unbiased[il-jvp_pairs]",
    "tests/test_chunk_networks.py::test_contraction_estimate_matches_exact[dit-network]",
    "tests/test_paper.py::test_exact_frobenius_batch_matches_per_sample_reference[network-False]",
    "tests/test_checkpoint.py::test_a_failed_orbax_restore_ends_with_its_error",
    "tests/test_side_by_side.py::test_without_official_code_no_ratio",
    "tests/test_data_minari.py::test_build_and_load_print_no_adroit_notice",
    "tests/test_flow_agents.py::test_fql_target_critic_moves_towards_the_critic_of_before_the_step",
    "tests/test_flow_agents.py::test_flow_bc_chunks_and_backbones[mlp]",
    "tests/test_contraction.py::test_penalty_gradient_matches_exact[eigen]",
    "tests/test_contraction.py::test_regulariser_reuses_denoising_draws_with_flax_like_params[eigen-drift]",
    "tests/test_contraction.py::test_random_mlp_jacobians_vmap[64]",
    "tests/test_contraction.py::test_designed_spectrum[neg_dominant_{-5..0.3}_d10]",
    "tests/test_contraction.py::test_action_chunk_shape_flattened_float32[chunk0]",
    "tests/test_contraction_diagnostics.py::test_mu_along_trajectory_matches_closed_form[continuous_linear]",
    "tests/test_networks.py::test_actor_shapes[lnresnet-event1]",
    "tests/test_samplers.py::test_mixture_mode_weights[ddpm]",
    "tests/test_samplers.py::test_convergence_order[ddim-1]",
    "tests/test_samplers.py::test_gaussian_moments[x0-ddpm]",
    "tests/test_toy_and_stats.py::test_toy_samples_lie_on_support_and_cover_modes",
    "tests/test_cli.py::test_train_damaged_checkpoint_is_one_message",
    "tests/test_paper.py::test_separate_edp_draw_is_used",
    "tests/test_resume.py::test_resume_from_an_earlier_checkpoint_when_the_latest_is_damaged",
    "tests/test_evaluation.py::test_evaluate_script_compares_runs_on_the_same_starts",
)


def pytest_collection_modifyitems(config, items):
    slow = set(SLOW_IN_THE_DEFAULT_RUN)
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)


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
