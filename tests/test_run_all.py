"""benchmarks/run_all.py (the one-shot accelerator script): every benchmark it names exists and
takes the flags it passes; results of several scripts merge into one JSON, and a script that
fails or runs out of time is recorded without stopping the others (fake scripts, no timing)."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402


@pytest.mark.parametrize("name", sorted(run_all.BENCHMARKS))
def test_every_benchmark_takes_the_flags_passed(name):
    script, full, quick, share = run_all.BENCHMARKS[name]
    source = (ROOT / "benchmarks" / script).read_text()
    flags = {a for a in full + quick + ["--out"] if a.startswith("--")}
    declared = set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', source))
    assert flags <= declared, (script, flags - declared)
    assert 0 < share < 1 and 0 < run_all.QUICK_SHARES[name] < 1


def test_merges_results_and_records_failures(tmp_path, monkeypatch):
    scripts = {"good": "import json, sys; json.dump({'rows': [1]}, open(sys.argv[-1], 'w'))",
               "bad": "raise SystemExit('broken')",
               "slow": "import time; time.sleep(60)"}
    table = {}
    for name, code in scripts.items():
        (tmp_path / f"{name}.py").write_text(code)
        table[name] = (f"{name}.py", [], [], 0.3)
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", table)
    out = tmp_path / "all.json"
    # every script gets at least MIN_TIMEOUT_S: 2 s here, so "slow" times out
    monkeypatch.setattr(run_all, "MIN_TIMEOUT_S", 2.0)
    assert run_all.main(["--budget", "3", "--out", str(out)]) == 1
    record = json.loads(out.read_text())
    bench = record["benchmarks"]
    assert bench["good"]["returncode"] == 0 and bench["good"]["result"] == {"rows": [1]}
    assert bench["bad"]["returncode"] == 1 and "broken" in " ".join(bench["bad"]["output_tail"])
    assert bench["slow"].get("timed_out") and "device" in record
