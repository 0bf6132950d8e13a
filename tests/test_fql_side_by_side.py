"""benchmarks/fql_side_by_side.py (FQL's own code and cdp_jax's FQL timed side by side): the command
line answers before JAX is imported; rows, ratios and the contraction overhead are combined
correctly from workers' per-unit times (fake times, no timing); without FQL's code a quick run of
cdp_jax's rows alone writes every expected row. No assertion on a timing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_configs import _GUARDED_RUN

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fql_side_by_side.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import fql_side_by_side as sbs  # noqa: E402  (JAX-free at import)

# Most of a smoke run is compilation; the compiled code's speed does not matter here.
QUICK_ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true"}
FQL_PYTHON, FQL_SRC = Path("/work/fqlvenv/bin/python"), Path("/work/fql_src")


def guarded(*args):
    return subprocess.run([sys.executable, "-c", _GUARDED_RUN, str(SCRIPT), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_help_and_bad_values_are_answered_before_jax():
    help_ = guarded("--help")
    assert help_.returncode == 0 and "--fql-python" in help_.stdout, help_.stderr[-2000:]
    for bad in (["--updates", "0"], ["--hidden", "512", "0"], ["--sample-batches", "x"],
                ["--repeats", "-1"], ["--only", "nope"], ["--worker", "torch"]):
        out = guarded(*bad)
        text = out.stdout + out.stderr
        assert out.returncode == 2 and "error:" in text and "HEAVY-IMPORT" not in text, (bad, text)


def test_quick_defaults_yield_to_explicit_values(tmp_path):
    args = sbs.parse_args(["--quick", "--repeats", "7"])
    assert (args.repeats, args.updates, args.rounds) == (7, 2, 1)
    assert sbs.parse_args([]).updates is None  # chosen by the worker from its backend
    missing = sbs.parse_args(["--fql-python", str(tmp_path / "python"), "--fql-src", str(tmp_path)])
    assert "--fql-python" in sbs.fql_missing(missing)
    (tmp_path / "agents").mkdir()
    no_src = sbs.parse_args(["--fql-python", sys.executable, "--fql-src", str(tmp_path)])
    assert "agents/fql.py" in sbs.fql_missing(no_src)
    assert sbs.fql_missing(sbs.parse_args(["--no-fql"])) == "--no-fql given"


def _worker(side, seconds: dict, updates=4):
    rows = {name: {"times_s": list(t), "units_per_call": updates, "compile_s": 1.0}
            for name, t in seconds.items()}
    return {"side": side, "rows": rows, "updates": updates}


def test_rows_ratios_and_overhead_from_per_unit_times():
    batches = [1]
    rounds = [{"fql_code": _worker("fql_code", {"train/fql_code": [0.4, 0.5, 0.6],
                                                "train/fql_code_device_batch": [0.2, 0.2, 0.2],
                                                "sample/fql_code/1": [2e-3, 2e-3, 4e-3]}),
               "cdp_jax": _worker("cdp_jax", {"train/cdp_jax_fql": [0.1, 0.1, 0.3],
                                              "train/cdp_jax_fql_cdp": [0.11, 0.11, 0.2],
                                              "sample/cdp_jax/1": [1e-3, 1e-3, 1e-3]})},
              {"cdp_jax": _worker("cdp_jax", {"train/cdp_jax_fql": [0.2, 0.2],
                                              "train/cdp_jax_fql_cdp": [0.21, 0.22],
                                              "sample/cdp_jax/1": [1e-3, 2e-3]}),
               "fql_code": {"error": "exit 1: boom"}}]
    rows, compared = sbs.combine(rounds, batches)
    assert set(rows) == {"train/fql_code", "train/fql_code_device_batch", "sample/fql_code/1",
                         "train/cdp_jax_fql", "train/cdp_jax_fql_cdp", "sample/cdp_jax/1"}
    plain, fql_main = rows["train/cdp_jax_fql"], rows["train/fql_code"]
    assert plain["median_s_per_round"] == [0.1, 0.2] and fql_main["median_s_per_round"] == [0.5, None]
    assert plain["median"] == pytest.approx(1 / 0.15) and plain["best"] == pytest.approx(10.0)
    assert rows["sample/fql_code/1"]["median"] == pytest.approx(2.0)  # ms per call
    main_ratio = compared["ours / FQL's main.py loop"]
    assert main_ratio["speed_ratio_per_round"] == [pytest.approx(5.0), None]
    assert main_ratio["speed_ratio"] == pytest.approx(5.0)
    assert plain["reference"] == "train/fql_code" and plain["ratio"] == pytest.approx(5.0)
    cdp = compared["fql-cdp / fql"]
    assert cdp["speed_ratio_per_round"] == [pytest.approx(0.1 / 0.11), pytest.approx(0.2 / 0.215)]
    assert rows["train/cdp_jax_fql_cdp"]["reference"] == "train/cdp_jax_fql"
    assert "matmul cdp_jax venv / FQL venv" not in compared  # no matmul rows in this run
    assert "reference" not in rows["train/fql_code"]


def test_both_sides_draw_the_same_dataset():
    a, b = sbs.random_transitions(50), sbs.random_transitions(50)
    assert sorted(a) == ["actions", "masks", "next_observations", "observations", "rewards",
                         "terminals"]
    assert all((a[k] == b[k]).all() and a[k].dtype == "float32" for k in a)
    assert a["observations"].shape == (50, sbs.OBS_DIM) and a["actions"].shape == (50, 3)
    assert ((a["masks"] + a["terminals"]) == 1).all() and abs(a["actions"]).max() <= 1


def test_quick_run_of_cdp_jax_rows_alone(tmp_path):
    out = tmp_path / "fql_sbs.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-fql", "--hidden", "8",
                           "8", "--sample-calls", "2", "--jax-cache", "", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=QUICK_ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FQL's code unavailable (--no-fql given)" in done.stdout
    result = json.loads(out.read_text())
    assert list(result["rows"]) == ["train/cdp_jax_fql", "train/cdp_jax_fql_cdp",
                                    "sample/cdp_jax/1", "sample/cdp_jax/1000"]
    for row in result["rows"].values():
        assert len(row["times_s"]) == 1 and len(row["times_s"][0]) == 2  # 1 round, 2 repeats
        assert row["median"] > 0 and row["side"] == "cdp_jax"
    assert list(result["comparisons"]) == ["fql-cdp / fql"]
    meta = result["meta"]
    assert meta["settings"]["updates_per_unit"] == {"cdp_jax": 2} and meta["errors"] == [{}]
    assert meta["versions"]["cdp_jax"]["jax"] and meta["cpu_count"] >= 1
    assert "contraction overhead" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (FQL_PYTHON.exists() and (FQL_SRC / "agents" / "fql.py").exists()),
                    reason="needs FQL's code and a Python with its dependencies")
def test_fql_worker_times_fql_code_on_the_same_data():
    env = {**QUICK_ENV, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(FQL_PYTHON), str(SCRIPT), "--worker", "fql_code", "--fql-src",
                           str(FQL_SRC), "--hidden", "8", "8", "--updates", "2", "--repeats", "1",
                           "--num-rows", "100", "--sample-calls", "1", "--sample-batches", "1",
                           "--jax-cache", ""], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(result["rows"]) == ["train/fql_code", "train/fql_code_device_batch",
                                    "sample/fql_code/1"]
    data = sbs.random_transitions(100)
    assert result["data_checksum"] == pytest.approx(sum(float(v.sum(dtype="float64"))
                                                        for v in data.values()))
