"""benchmarks/side_by_side.py: without the official code it times cdp_jax alone and prints no
ratio; a JAX worker prints one JSON line of per-unit times. Only the cheapest row runs here (the
2048^3 matmul: well under a second of compute per call); the PyTorch side needs the official code,
which the tests do not have."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "side_by_side.py")
ENV = {**os.environ, "PYTHONPATH": ROOT}


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600, check=True).stdout


def test_without_official_code_no_ratio(tmp_path):
    out = tmp_path / "sbs.json"
    stdout = run("--official", str(tmp_path / "missing"), "--cleandiffuser", str(tmp_path),
                 "--rows", "matmul", "--rounds", "1", "--repeats", "1", "--warmup", "0",
                 "--jax-cache", "", "--out", str(out))
    assert "official code unavailable" in stdout and "no ratio is printed" in stdout
    table = stdout[stdout.index("row "):stdout.index("wrote ")]
    assert "speedup" not in table and "official" not in table
    result = json.loads(out.read_text())
    row = result["rows"]["matmul"]
    assert row["official"] is None and row["speedup"] is None and row["cdp_jax"] > 0
    assert [set(r) for r in row["rounds"]] == [{"jax"}]
    assert result["meta"]["official_missing"] and len(result["meta"]["load_before"]) == 3


@pytest.mark.slow  # test_without_official_code_no_ratio runs a JAX worker in the default run
def test_jax_worker_prints_one_json_line():
    stdout = run("--worker", "jax", "--row", "matmul", "--repeats", "2", "--warmup", "1",
                 "--jax-cache", "")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["framework"] == "jax" and result["row"] == "matmul"
    assert len(result["times_s"]) == 2 and result["median_s"] > 0
    assert result["versions"]["cdp_jax"] == os.path.join(ROOT, "cdp_jax")


@pytest.mark.slow
def test_jax_worker_sampler_row():
    result = json.loads(run("--worker", "jax", "--row", "sample_2m/1", "--repeats", "2",
                            "--jax-cache", "").strip().splitlines()[-1])
    assert len(result["times_s"]) == 2 and result["units_per_call"] == 1
