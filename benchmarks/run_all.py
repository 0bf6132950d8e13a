"""Every benchmark in one go, sized for an accelerator: one command, one JSON, under 8 minutes.

Runs each benchmark script of this directory as its own process (settings below, chosen so that
the whole set fits a GPU session's 8-minute slot with compilation included), each with its share
of ``--budget`` as a timeout, and merges their JSON outputs into one file with the device, the
versions and every script's wall time and exit status. A script that fails or runs out of time
is recorded as such and the others still run.

    python benchmarks/run_all.py                       # on the accelerator: every benchmark
    python benchmarks/run_all.py --only sampler train  # names below
    python benchmarks/run_all.py --quick --budget 600  # smoke run on a CPU (tiny settings)

Writes ``benchmarks/results/run_all_<platform>.json`` (``--out`` to change it); record absolute
figures from it in benchmarks/RESULTS.md. ``side_by_side`` runs cdp_jax's rows only unless
``--official`` and ``--cleandiffuser`` name checkouts of the official code (PyTorch needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIN_TIMEOUT_S = 30.0  # every benchmark gets at least this long, whatever is left of the budget
# name -> (script, full arguments, --quick arguments, share of the budget)
BENCHMARKS = {
    "sampler": ("sampler_throughput.py", ["--repeats", "20"], ["--quick"], 0.12),
    "train": ("train_throughput.py", ["--updates", "50", "--repeats", "5"], ["--quick",
              "--only", "dql_edp", "paper/"], 0.30),
    "contraction": ("contraction_overhead.py", ["--repeats", "7"], ["--quick"], 0.15),
    "chunk": ("chunk_overhead.py", ["--repeats", "5"], ["--repeats", "1", "--chunks", "16x4",
              "--batch", "32", "--hidden", "16"], 0.10),
    "scaling": ("scaling.py", ["--updates", "20", "--repeats", "5", "--devices", "1"],
                ["--quick", "--devices", "1", "--seeds", "1", "4"], 0.10),
    "side_by_side": ("side_by_side.py", ["--rounds", "1", "--repeats", "10"],
                     ["--rounds", "1", "--repeats", "2", "--warmup", "1", "--updates", "2",
                      "--rows", "sample_2m/1", "penalty/3", "matmul"], 0.15),
    "sac": ("sac_throughput.py", ["--steps", "2000", "--repeats", "2"], ["--quick"], 0.08),
}


def device_record() -> dict:
    """The backend and devices JAX sees in a fresh process (without importing JAX here)."""
    code = ("import jax, json; d = jax.devices(); print(json.dumps({'backend': "
            "jax.default_backend(), 'devices': [str(x) for x in d], 'device_kind': "
            "d[0].device_kind, 'jax': jax.__version__}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(name: str, args, budget_s: float, scratch: Path) -> dict:
    script, full, quick, _ = BENCHMARKS[name]
    out = scratch / f"{name}.json"
    command = [sys.executable, str(HERE / script), *(quick if args.quick else full),
               "--out", str(out)]
    if name == "side_by_side" and args.official and args.cleandiffuser:
        command += ["--official", args.official, "--cleandiffuser", args.cleandiffuser]
    print(f"[{name}] {' '.join(command[1:])} (timeout {budget_s:.0f} s)", flush=True)
    start = time.perf_counter()
    record = {"command": " ".join(["python", *command[1:]]), "timeout_s": round(budget_s)}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=budget_s,
                              cwd=HERE.parent)
        record["returncode"] = proc.returncode
        tail = proc.stdout.strip().splitlines()[-30:]
        if proc.returncode != 0:
            tail += proc.stderr.strip().splitlines()[-15:]
        record["output_tail"] = tail
    except subprocess.TimeoutExpired:
        record["returncode"] = None
        record["timed_out"] = True
    record["wall_s"] = round(time.perf_counter() - start, 1)
    if out.exists():
        record["result"] = json.loads(out.read_text())
    status = ("ok" if record["returncode"] == 0 else "TIMED OUT" if record.get("timed_out")
              else f"FAILED (exit {record['returncode']})")
    print(f"[{name}] {status} in {record['wall_s']} s", flush=True)
    for line in record.get("output_tail", [])[-12:]:
        print(f"    {line}")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for all benchmarks together (each gets its share)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke run)")
    parser.add_argument("--official", help="official code checkout, for side_by_side")
    parser.add_argument("--cleandiffuser", help="CleanDiffuser checkout, for side_by_side")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/run_all_<backend>.json")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")

    start = time.perf_counter()
    device = device_record()
    print(f"device: {device}", flush=True)
    shares = {name: BENCHMARKS[name][3] for name in args.only}
    total = sum(shares.values())
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only:
            left = args.budget - (time.perf_counter() - start)
            budget_s = max(MIN_TIMEOUT_S, min(left, args.budget * shares[name] / total))
            results[name] = run_one(name, args, budget_s, Path(scratch))
    record = {"device": device, "machine": {"platform": platform.platform(),
                                            "cpus": os.cpu_count()},
              "quick": args.quick, "budget_s": args.budget,
              "wall_s": round(time.perf_counter() - start, 1), "benchmarks": results}
    out = Path(args.out or HERE / "results" / f"run_all_{device.get('backend', 'unknown')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    failed = [n for n, r in results.items() if r["returncode"] != 0]
    print(f"wrote {out} in {record['wall_s']} s; "
          + (f"failed or timed out: {failed}" if failed else "every benchmark ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
