"""Every benchmark in one go, sized for an accelerator: one command, one JSON, under 8 minutes.

Runs each benchmark script of this directory as its own process (settings below, chosen so that
the whole set fits a GPU session's 8-minute slot with compilation included), each with its share
of ``--budget`` as a timeout, and merges their JSON outputs into one file with the device, the
versions and every script's wall time and exit status. A script that fails or runs out of time
is recorded as such and the others still run.

``--quick`` is a smoke run, not a measurement: tiny settings that still reach every kind of row
of every script, compiled with XLA's backend optimisations off (:data:`QUICK_XLA_FLAGS`: most of a
smoke run is compilation, and the compiled code's speed does not matter there).

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

from cdp_jax.configs import fields  # JAX-free

HERE = Path(__file__).resolve().parent
MIN_TIMEOUT_S = 30.0  # every benchmark gets at least this long, whatever is left of the budget
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# name -> (script, full arguments, --quick arguments, share of the budget)
# --quick reaches every kind of row the full run has, at the least that compiles it: one row per
# kind where rows differ only in settings (train: one per agent, network and penalty estimator;
# chunk: eigen_K4_all_t is default's code path on another window, and a one-level UNet; sampler:
# every method at one batch size).
BENCHMARKS = {
    "sampler": ("sampler_throughput.py", ["--repeats", "20"], ["--batches", "100", "--repeats",
                "3"], 0.12),
    "train": ("train_throughput.py", ["--updates", "50", "--repeats", "5"], [
        "--quick", "--updates", "1", "--repeats", "1", "--unet-hidden", "8", "--only", "dql_edp/",
        "dbc_lift/penalty_10%", "paper/penalty", "paper/jvp_m16", "paper_il/hutch_m4",
        "dbc_unet_16x4/off"], 0.30),
    "contraction": ("contraction_overhead.py", ["--repeats", "7"], ["--quick", "--repeats", "1"],
                    0.15),
    "chunk": ("chunk_overhead.py", ["--repeats", "5"], ["--repeats", "1", "--chunks", "16x4",
              "--batch", "8", "--hidden", "8", "--depth", "1", "--variants", "vanilla",
              "default", "frobenius", "exact_jacobian"], 0.10),
    "scaling": ("scaling.py", ["--updates", "20", "--repeats", "5", "--devices", "1"],
                ["--quick", "--updates", "2", "--repeats", "1", "--devices", "1", "--seeds", "2"],
                0.10),
    "side_by_side": ("side_by_side.py", ["--rounds", "1", "--repeats", "10"],
                     ["--rounds", "1", "--repeats", "2", "--warmup", "1", "--updates", "2",
                      "--rows", "rl_step/off", "il_step/fast", "sample_2m/1", "penalty/3",
                      "penalty/7", "matmul"], 0.15),
    "fql_side_by_side": ("fql_side_by_side.py", ["--rounds", "1", "--repeats", "3", "--matmul"],
                         ["--quick", "--hidden", "64", "64", "--matmul"], 0.15),
    "sac": ("sac_throughput.py", ["--steps", "2000", "--repeats", "2"], ["--steps", "100",
            "--learning-starts", "100", "--repeats", "1"], 0.08),
}
# --quick's shares: a smoke run's time is compilation and fixed costs (SAC's environment steps and
# its old-vs-new check), not the full run's workload; roughly in proportion to each script's wall
# time in a --quick run on a 2-core CPU under a load average of 6
QUICK_SHARES = {"sampler": 0.05, "train": 0.33, "contraction": 0.10, "chunk": 0.15,
                "scaling": 0.09, "side_by_side": 0.14, "sac": 0.14, "fql_side_by_side": 0.10}


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
    env = None
    if args.quick:
        flags = f"{os.environ.get('XLA_FLAGS', '')} {QUICK_XLA_FLAGS}".strip()
        env = {**os.environ, "XLA_FLAGS": flags}
    print(f"[{name}] {' '.join(command[1:])} (timeout {budget_s:.0f} s)", flush=True)
    start = time.perf_counter()
    record = {"command": " ".join(["python", *command[1:]]), "timeout_s": round(budget_s)}
    if env is not None:
        record["xla_flags"] = env["XLA_FLAGS"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=budget_s,
                              cwd=HERE.parent, env=env)
        record["returncode"] = proc.returncode
        tail = proc.stdout.strip().splitlines()[-30:]
        if proc.returncode != 0:
            tail += proc.stderr.strip().splitlines()[-15:]
        record["output_tail"] = tail
    except subprocess.TimeoutExpired as err:
        record["returncode"] = None
        record["timed_out"] = True
        # what it printed before it was stopped: how far it got
        printed = err.stdout or b""  # bytes here, even with text=True
        if isinstance(printed, bytes):
            printed = printed.decode(errors="replace")
        record["output_tail"] = printed.strip().splitlines()[-30:]
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
    parser.add_argument("--budget", type=fields.positive_float, default=450.0,
                        help="seconds for all benchmarks together (each gets its share)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, XLA optimisations off (a smoke run)")
    parser.add_argument("--official", help="official code checkout, for side_by_side")
    parser.add_argument("--cleandiffuser", help="CleanDiffuser checkout, for side_by_side")
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/run_all_<backend>.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    device = device_record()
    print(f"device: {device}", flush=True)
    shares = {name: QUICK_SHARES[name] if args.quick else BENCHMARKS[name][3]
              for name in args.only}
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
