"""Gradient steps per second of the agents' full update, with and without the contraction penalty.

Rows (issue 5, and issue 8 for the UNet):

* ``dql_edp/penalty_10%`` and ``dql_edp/off``: EDP + Diffusion-QL critic on D4RL hopper shapes (obs
  11, action 3, batch 256, Diffusion-QL MLP 3 x 256 Mish, T = 50, TD target from a 15-step
  DPM-Solver++ 2M sample of the EMA actor), ``ContractionConfig(weight=0.1)`` (eigen, Lanczos
  K = 4, lowest 10% of noise levels, ``ceil(0.1 B)`` samples) or no penalty;
* ``dbc_lift/penalty_all``, ``dbc_lift/penalty_10%``, ``dbc_lift/off``: DBC on Robomimic lift
  low-dim shapes (obs 19 x 2 history, action 7, batch 512, LN-ResNet 3 x 512 GELU) with the
  penalty on the whole batch (``window=1, num_penalised=1.0``), on the default window, or off;
* ``dbc_unet_16x{4,7}/penalty_10%`` and ``/off``: DBC with the temporal UNet on action chunks of
  16 x 4 (Fetch, obs 28 x 2) and 16 x 7 (lift, obs 19 x 2), batch 256;
* ``paper/penalty`` and ``paper/off``: the ``paper`` preset's update (the official pipeline,
  cdp_jax.paper.PAPER_RL: separate EDP draw, the exact ``mean((J_sym + 0.1 I)^2)`` on every
  in-window sample of the batch, CleanDiffuser's grid) on hopper shapes, batch 256, with the
  penalty (weight 0.1) or with weight 0;
* ``paper_il/penalty`` and ``paper_il/off``: the ``paper-il`` update (Pearce backbone, exact
  penalty on the whole batch) on lift shapes, batch 512;
* ``paper/<est>_m<m>_p<p>``, ``paper_il/<est>_m<m>_p<p>``: the same updates with the fast
  presets' kind of penalty (``paper-fast`` / ``paper-il-fast``): estimator ``hutch`` (Hutchinson:
  one JVP and one VJP per probe) or ``jvp`` (forward-mode probe pairs), ``p`` probes (pairs) on
  ``m`` of the penalised samples (:data:`FAST_GRID`; the presets' own settings are among them).

Each row is a jitted :func:`cdp_jax.training.make_train_chunk`: ``--updates`` gradient steps inside
one ``lax.scan``, batches drawn on device from random arrays. Everything is compiled first, then the
rows and a 2048^3 f32 matmul are timed round-robin (``jax.block_until_ready``, ``--repeats``
rounds) so that all see the same background load; median and min steps/s. FLOPs per step are
counted on the update's jaxpr (matmuls and convolutions, loop bodies times their trip counts;
XLA's ``cost_analysis()`` counts a loop body once: stored with ``--xla-cost`` but not used), and
``% peak`` is ``flops * steps/s`` over the matmul rate measured in the same run.

    python benchmarks/train_throughput.py            # all rows
    python benchmarks/train_throughput.py --quick    # fewer updates and repeats
    python benchmarks/train_throughput.py --only dql  # rows whose name starts with "dql"
    python benchmarks/train_throughput.py --only dbc_unet --out benchmarks/results/train_throughput_unet.json

Writes ``benchmarks/results/train_throughput.json``. For a comparison with the official PyTorch
code, run ``benchmarks/side_by_side.py``: it times both in the same run, so that its ratios do not
divide today's timing by another day's.

History, not used by this script: issue 5 quoted the official PyTorch code on a 2-core CPU (median
of 5 x 100 steps, load not recorded) at 15.4 steps/s with the penalty and 17.2 without on the
``dql_edp`` shapes, 4.1 with the whole-batch penalty and 36.7 without on the ``dbc_lift`` shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

from cdp_jax import paper
from cdp_jax.configs import dbc as dbc_config
from cdp_jax.configs import dql as dql_config
from cdp_jax.configs import fields
from cdp_jax.configs.contraction import ContractionConfig

MATMUL_N = 2048
NUM_ROWS = 4096  # rows of the random "dataset" the batches are drawn from

PENALTY_10 = ContractionConfig(weight=0.1)
PENALTY_ALL = ContractionConfig(weight=0.1, window=1.0, num_penalised=1.0)
OFF = ContractionConfig(weight=0.0)
FAST_GRID = {"paper": [("hutchinson", 8, 1), ("hutchinson", 16, 1), ("hutchinson", 32, 1),
                       ("jvp_pairs", 16, 1), ("jvp_pairs", 32, 1)],
             "paper_il": [("hutchinson", 4, 1), ("hutchinson", 8, 1), ("hutchinson", 16, 1),
                          ("hutchinson", 8, 2), ("jvp_pairs", 4, 1), ("jvp_pairs", 8, 1),
                          ("jvp_pairs", 16, 1)]}
SHORT = {"hutchinson": "hutch", "jvp_pairs": "jvp"}


def transitions(key, obs_dim, action_dim):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"observations": jax.random.normal(k1, (NUM_ROWS, obs_dim)),
            "actions": jax.random.uniform(k2, (NUM_ROWS, action_dim), minval=-1, maxval=1),
            "rewards": jax.random.normal(k3, (NUM_ROWS,)),
            "next_observations": jax.random.normal(k4, (NUM_ROWS, obs_dim)),
            "terminals": jnp.zeros((NUM_ROWS,))}


def windows(key, obs_horizon, obs_dim, action_horizon, action_dim):
    k1, k2 = jax.random.split(key)
    return {"observations": jax.random.normal(k1, (NUM_ROWS, obs_horizon, obs_dim)),
            "actions": jax.random.uniform(k2, (NUM_ROWS, action_horizon, action_dim),
                                          minval=-1, maxval=1)}


def rows(unet_hidden: int):
    """``name -> (agent name, config, obs_dim, action_dim, batch, arrays builder)``; JAX-free (the
    command line checks ``--only`` against these names before JAX is imported) until a builder
    is called."""
    out = {}
    for name, penalty in (("penalty_10%", PENALTY_10), ("off", OFF)):
        out[f"dql_edp/{name}"] = ("dql", dql_config.default_config(contraction=penalty), 11, 3,
                                  256, lambda k: transitions(k, 11, 3))
    for name, penalty in (("penalty_all", PENALTY_ALL), ("penalty_10%", PENALTY_10), ("off", OFF)):
        out[f"dbc_lift/{name}"] = ("dbc", dbc_config.default_config(contraction=penalty), 19, 7,
                                   512, lambda k: windows(k, 2, 19, 1, 7))
    for name, weight in (("penalty", 0.1), ("off", 0.0)):
        penalty = dataclasses.replace(paper.PAPER_PENALTY, weight=weight)
        out[f"paper/{name}"] = ("dql", dql_config.default_config(**{**paper.PAPER_RL,
                                                                     "contraction": penalty}),
                                11, 3, 256, lambda k: transitions(k, 11, 3))
        il_penalty = dataclasses.replace(paper.PAPER_IL["contraction"], weight=weight)
        out[f"paper_il/{name}"] = ("dbc", dbc_config.default_config(**{**paper.PAPER_IL,
                                                                       "contraction": il_penalty}),
                                   19, 7, 512, lambda k: windows(k, 2, 19, 1, 7))
    # The fast presets' penalty (Hutchinson probes on m of the penalised samples) for a grid of
    # (m, probes): the cost half of docs/MATH.md's variance-versus-cost table.
    for estimator, m, probes in FAST_GRID["paper"]:
        penalty = dataclasses.replace(paper.PAPER_FAST_PENALTY, frobenius_estimator=estimator,
                                      num_penalised=m, num_probes=probes)
        out[f"paper/{SHORT[estimator]}_m{m}_p{probes}"] = (
            "dql", dql_config.default_config(**{**paper.PAPER_RL, "contraction": penalty}), 11, 3,
            256, lambda k: transitions(k, 11, 3))
    for estimator, m, probes in FAST_GRID["paper_il"]:
        penalty = dataclasses.replace(paper.PAPER_IL_FAST["contraction"],
                                      frobenius_estimator=estimator, num_penalised=m,
                                      num_probes=probes)
        out[f"paper_il/{SHORT[estimator]}_m{m}_p{probes}"] = (
            "dbc", dbc_config.default_config(**{**paper.PAPER_IL, "contraction": penalty}), 19, 7,
            512, lambda k: windows(k, 2, 19, 1, 7))
    for action_dim, obs_dim in ((4, 28), (7, 19)):
        for name, penalty in (("penalty_10%", PENALTY_10), ("off", OFF)):
            config = dbc_config.default_config(actor_network="unet", hidden_dim=unet_hidden,
                                               depth=3, activation="mish", action_horizon=16,
                                               n_action=8, contraction=penalty)
            out[f"dbc_unet_16x{action_dim}/{name}"] = (
                "dbc", config, obs_dim, action_dim, 256,
                lambda k, o=obs_dim, a=action_dim: windows(k, 2, o, 16, a))
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 updates per call, 3 repeats")
    parser.add_argument("--updates", type=fields.positive_int, default=None,
                        help="K updates per jitted call")
    parser.add_argument("--repeats", type=fields.positive_int, default=None)
    parser.add_argument("--only", nargs="*", default=None, metavar="PREFIX",
                        help="row-name prefixes to run (rows: "
                             f"{' '.join(rows(64))})".replace("%", "%%"))
    parser.add_argument("--unet-hidden", type=fields.positive_int, default=64,
                        help="UNet base width, a multiple of 8 (down_dims = w, 2w, 4w; Diffusion "
                             "Policy: 256)")
    parser.add_argument("--xla-cost", action="store_true",
                        help="also print XLA's cost_analysis() FLOPs (loop bodies counted once)")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args(argv)
    if args.unet_hidden % 8:
        parser.error(f"argument --unet-hidden: {args.unet_hidden} is not a multiple of 8 "
                     "(GroupNorm groups)")
    names = list(rows(args.unet_hidden))
    unmatched = [p for p in args.only or () if not any(n.startswith(p) for n in names)]
    if unmatched:
        parser.error(f"argument --only: no row starts with {' '.join(map(repr, unmatched))}; "
                     f"rows: {' '.join(names)}")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402

from cdp_jax import training  # noqa: E402
from cdp_jax.agents import AGENTS  # noqa: E402

# ----------------------------------------------------------------------------- FLOP count


def _subjaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def count_flops(jaxpr) -> tuple[float, float]:
    """``(matmul_flops, elementwise_ops)`` of a jaxpr: ``2 M N K`` per dot / convolution output,
    one op per output element of everything else; ``scan`` bodies times ``length``, ``cond``
    the costliest branch, ``while`` bodies once (none on the benchmarked paths)."""
    mm = other = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            k = math.prod(lhs[i] for i in contract)
            mm += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
            continue
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            mm += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
            continue
        subs = list(_subjaxprs(eqn.params))
        if subs:
            costs = [count_flops(s) for s in subs]
            if name == "cond":
                costs = [max(costs, key=lambda c: c[0] + c[1])]
            reps = eqn.params.get("length", 1) if name == "scan" else 1
            mm += reps * sum(c[0] for c in costs)
            other += reps * sum(c[1] for c in costs)
            continue
        other += sum(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
    return mm, other


def step_flops(agent, state, batch, key, xla_cost: bool) -> dict:
    closed = jax.make_jaxpr(agent.update)(state, batch, key)
    mm, other = count_flops(closed.jaxpr)
    out = {"matmul_flops": mm, "elementwise_ops": other}
    if xla_cost:  # a second compilation of the update (minutes for the UNet with the penalty)
        cost = jax.jit(agent.update).lower(state, batch, key).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out["xla_cost_analysis_flops"] = float(cost.get("flops", float("nan"))) if cost else None
    return out


# ----------------------------------------------------------------------------- timing




def main(args):
    updates = args.updates or (5 if args.quick else 20)
    repeats = args.repeats or (3 if args.quick else 5)
    selected = {name: row for name, row in rows(args.unet_hidden).items()
                if not args.only or any(name.startswith(p) for p in args.only)}

    key = jax.random.key(0)
    calls, info = {}, {}
    for name, (agent_name, config, obs_dim, action_dim, batch, make_arrays) in selected.items():
        agent = AGENTS[agent_name]
        state = agent.init(jax.random.key(1), config, obs_dim, action_dim)
        arrays = make_arrays(jax.random.key(2))
        chunk = jax.jit(training.make_train_chunk(agent, updates, batch))
        start = time.perf_counter()
        jax.block_until_ready(chunk(state, arrays, key))
        compile_s = time.perf_counter() - start
        one_batch = jax.tree.map(lambda a, n=batch: a[:n], arrays)
        info[name] = {"compile_s": compile_s, "batch": batch, "obs_dim": obs_dim,
                      "action_dim": action_dim, **step_flops(agent, state, one_batch, key, args.xla_cost)}
        calls[name] = (chunk, (state, arrays, key))
        print(f"compiled {name} in {compile_s:.1f} s", flush=True)
    a = jax.random.normal(jax.random.key(3), (MATMUL_N, MATMUL_N))
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    calls["matmul"] = (matmul, (a,))

    load_before = os.getloadavg()
    times = timing.time_interleaved(calls, repeats)
    load_after = os.getloadavg()
    mm_times = np.asarray(times.pop("matmul"))
    matmul_gflops = 2.0 * MATMUL_N**3 / np.median(mm_times) / 1e9

    results = []
    header = f"{'row':<26} {'steps/s':>8} {'max':>7} {'ms/step':>8} {'GFLOP':>6} {'%peak':>6}"
    print(f"\nload average {load_before[0]:.1f} -> {load_after[0]:.1f}; matmul "
          f"{matmul_gflops:.0f} GFLOP/s (median of {repeats}); {updates} updates per call")
    print(header)
    for name, t in times.items():
        t = np.asarray(t)
        rate, best = updates / np.median(t), updates / np.min(t)
        gflop = info[name]["matmul_flops"] / 1e9
        row = {"row": name, "steps_per_s": rate, "max_steps_per_s": best,
               "ms_per_step": 1e3 / rate, "gflop_per_step": gflop,
               "fraction_of_matmul_rate": gflop * rate / matmul_gflops, **info[name]}
        results.append(row)
        print(f"{name:<26} {rate:>8.1f} {best:>7.1f} {1e3 / rate:>8.1f} {gflop:>6.2f}"
              f" {100 * row['fraction_of_matmul_rate']:>5.0f}%")
    by_name = {r["row"]: r for r in results}
    overheads = {}
    for group in sorted({n.split("/")[0] for n in by_name}):
        off = by_name.get(f"{group}/off")
        for r in (r for r in results if r["row"].startswith(group + "/") and r is not off):
            if off:
                # Per-round ratio (both timed back to back), median over rounds: load-robust.
                ratio = np.median(np.asarray(times[r["row"]]) / np.asarray(times[off["row"]]))
                overheads[r["row"]] = float(ratio - 1.0)
                print(f"penalty overhead {r['row']:<26} {100 * (ratio - 1):+6.0f}% "
                      "(per-round time ratio vs off, median)")
    meta = {"updates_per_call": updates, "repeats": repeats, "quick": args.quick,
            "matmul_n": MATMUL_N, "matmul_gflops": matmul_gflops,
            "loadavg_before": load_before, "loadavg_after": load_after,
            "unet_hidden": args.unet_hidden, "jax": jax.__version__,
            "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "note": "shared, noisy CPU; compare ratios from one run, not absolute numbers"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, "penalty_overhead": overheads},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
