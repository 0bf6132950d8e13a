"""Environment steps per second of SAC's online training loop on Hopper-v5: the previous loop against
:func:`cdp_jax.agents.sac_train.train`, in one run.

Rows (all: batch 256, 256-256 networks, one jitted ``lax.scan`` of updates every 50 env steps,
no transition record, one final evaluation episode outside the timed window):

* ``old``: the loop as it was before this benchmark (:func:`old_train`, kept here as the
  baseline): per env step a host-side key split, ``jnp.asarray`` of the observation and a jitted
  ``act`` on the whole agent state. With the same seed it trains bit-identical parameters to
  ``new`` (same random stream, same updates; checked first, :func:`old_equals_new`);
* ``new``: :func:`sac_train.train` with the defaults (one env, one update per env step): one jitted
  :func:`sac.explore` per vector step on the actor's parameters, the key split inside it;
* ``new/num_envs=5``: five envs stepping together, actions for all from one call
  (``train_every=10``: still 50 env steps and 50 updates per update call);
* ``new/utd=0.5`` and ``new/utd=0.2``: fewer gradient steps per env step (``updates_per_step``).
  These change the algorithm's compute per env step (and what it learns per env step): speed
  rows, not drop-in replacements (see ``benchmarks/RESULTS.md``).

Each row is a whole training run of ``--learning-starts`` random steps then ``--steps`` policy
steps; a ``progress`` callback timestamps every vector step, and the rate is taken from the first
update call to the last (whole update cycles), split into ``collect`` (the vector steps without an
update call: acting, env step, buffer) and ``update`` (the rest: sampling the batches and the
jitted update calls), both per env step. Everything is compiled in an untimed first round; then the
rows run round-robin ``--repeats`` times (the order reversed every other round) so that all see
the same background load, and a 50-update ``update_many`` call and a 2048^3 float32 matmul are
timed alone in each round. Median (min, max) over rounds; the speed-up of a row is the median over
rounds of ``old / row`` times.

    python benchmarks/sac_throughput.py             # 3 rounds of 2000 policy steps per row
    python benchmarks/sac_throughput.py --quick     # 1 round of 500 steps

Writes ``benchmarks/results/sac_throughput.json`` (with the load average before and after).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from cdp_jax.configs import fields

ENV_ID = "Hopper-v5"
MATMUL_N = 2048
ROWS = {"old": {}, "new": {}, "new/num_envs=5": {"num_envs": 5, "train_every": 10},
        "new/utd=0.5": {"updates_per_step": 0.5}, "new/utd=0.2": {"updates_per_step": 0.2}}
CYCLE = 50  # env steps between update calls in every row (num_envs * train_every)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=fields.positive_int, default=2000,
                        help=f"policy steps per row and round (a multiple of {CYCLE}, at least "
                             f"{2 * CYCLE}: the rate is taken over whole update cycles)")
    parser.add_argument("--learning-starts", type=fields.nonnegative_int, default=1000,
                        help=f"random steps first (a multiple of {CYCLE})")
    parser.add_argument("--repeats", type=fields.positive_int, default=3, help="timed rounds")
    parser.add_argument("--quick", action="store_true", help="--steps 500 --repeats 1")
    parser.add_argument("--out", default="benchmarks/results/sac_throughput.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 500, 1
    if args.steps % CYCLE or args.steps < 2 * CYCLE:
        parser.error(f"argument --steps: got {args.steps}; expected a multiple of {CYCLE}, at "
                     f"least {2 * CYCLE} (whole update cycles)")
    if args.learning_starts % CYCLE:
        parser.error(f"argument --learning-starts: got {args.learning_starts}; expected a "
                     f"multiple of {CYCLE} (one update cycle)")
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help and a bad value are answered before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from train_throughput import count_flops  # noqa: E402

from cdp_jax.agents import sac, sac_train  # noqa: E402


def old_train(env_id, config, num_steps, seed=0, *, eval_episodes=1, progress=None):
    """The previous ``sac_train.train`` hot loop, verbatim but for the output / resume branches (off
    in every row here): the baseline the ``old`` row times."""
    config.validate()
    envs = sac_train.make_envs(env_id, config.num_envs, None)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(envs.single_action_space.shape))
    scale = sac_train.action_scaler(envs.single_action_space)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    state = sac.init(init_key, config, obs_dim, action_dim)
    capacity = min(config.buffer_size, num_steps)
    buffer = {"observations": np.zeros((capacity, obs_dim), np.float32),
              "actions": np.zeros((capacity, action_dim), np.float32),
              "rewards": np.zeros((capacity,), np.float32),
              "next_observations": np.zeros((capacity, obs_dim), np.float32),
              "terminals": np.zeros((capacity,), np.float32)}
    size = cursor = steps = vector_steps = 0
    num_updates = sac.updates_per_call(config)
    obs, _ = envs.reset(seed=[int(s) for s in rng.integers(2**31, size=config.num_envs)])
    try:
        while steps < num_steps:
            if steps < config.learning_starts:
                policy_action = rng.uniform(-1.0, 1.0, (config.num_envs, action_dim))
            else:
                key, k = jax.random.split(key)
                policy_action = np.asarray(sac_train.act_jit(state, jnp.asarray(obs, jnp.float32),
                                                              k))
            env_action = scale(policy_action)
            next_obs, reward, terminated, truncated, info = envs.step(env_action)
            real_next = np.array(next_obs, dtype=np.float64)
            done = terminated | truncated
            if done.any():
                for i in np.flatnonzero(done):
                    real_next[i] = info["final_obs"][i]
            rows = (cursor + np.arange(config.num_envs)) % capacity
            buffer["observations"][rows] = obs
            buffer["actions"][rows] = policy_action
            buffer["rewards"][rows] = reward
            buffer["next_observations"][rows] = real_next
            buffer["terminals"][rows] = terminated
            cursor = (cursor + config.num_envs) % capacity
            size = min(size + config.num_envs, capacity)
            obs = next_obs
            steps += config.num_envs
            vector_steps += 1
            if progress is not None:
                progress(config.num_envs)
            if steps > config.learning_starts and vector_steps % config.train_every == 0:
                idx = rng.integers(size, size=(num_updates, config.batch_size))
                batches = {k: v[idx] for k, v in buffer.items()}
                key, k = jax.random.split(key)
                state, metrics = sac_train.update_many_jit(state, batches, k)
                last_metrics = {n: float(np.mean(v)) for n, v in metrics.items()}
                if not all(np.isfinite(v) for v in last_metrics.values()):
                    raise FloatingPointError(f"non-finite SAC metrics at env step {steps}")
    finally:
        envs.close()
    sac_train.evaluate_policy(state, env_id, eval_episodes, seed + 10_000 + steps)
    return state


def timed_run(name: str, config: sac.SACConfig, num_steps: int) -> dict:
    """Seconds per env step from the first update call to the last (whole update cycles), split
    into collection (the vector steps without an update call) and the update calls."""
    stamps = []
    progress = lambda n: stamps.append(time.perf_counter())
    if name == "old":
        old_train(ENV_ID, config, num_steps, progress=progress)
    else:
        sac_train.train(ENV_ID, config, num_steps, eval_every=num_steps, eval_episodes=1,
                        progress=progress)
    # stamps[j] is taken after vector step j + 1, before that step's update call (if any), so
    # stamps[j + 1] - stamps[j] holds that call (if any) and the collection of vector step j + 2.
    first = config.learning_starts // config.num_envs + config.train_every - 1
    last = len(stamps) - 1  # before the last update call: whole cycles in between
    deltas = np.diff(stamps[first:last + 1])
    has_update = (np.arange(first, last) + 1) % config.train_every == 0
    env_steps = (last - first) * config.num_envs
    collect = deltas[~has_update].mean() * (last - first) / env_steps
    total = deltas.sum() / env_steps
    return {"total": total, "collect": collect, "update": total - collect}


def old_equals_new(num_envs: int) -> bool:
    """Whether the baseline and :func:`sac_train.train` train bit-identical parameters from one seed
    (a small Hopper run: 64-64 networks, 300 random then 600 policy steps)."""
    config = sac.default_config(hidden_dims=(64, 64), batch_size=64, learning_starts=300,
                                num_envs=num_envs, train_every=30 // num_envs)
    old = old_train(ENV_ID, config, 900, seed=4)
    new, _ = sac_train.train(ENV_ID, config, 900, seed=4, eval_every=900, eval_episodes=1)
    return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new),
                                                     strict=True))


def main(args):
    configs = {name: sac.default_config(learning_starts=args.learning_starts, **overrides)
               for name, overrides in ROWS.items()}

    # The update alone (50 updates per call) and the matmul probe, for ms per update and % peak.
    state = sac.init(jax.random.PRNGKey(0), configs["new"], 11, 3)
    rng = np.random.default_rng(0)
    batches = {"observations": rng.normal(size=(50, 256, 11)),
               "actions": rng.uniform(-1, 1, (50, 256, 3)), "rewards": rng.normal(size=(50, 256)),
               "next_observations": rng.normal(size=(50, 256, 11)),
               "terminals": np.zeros((50, 256))}
    batches = jax.device_put(jax.tree.map(lambda x: x.astype(np.float32), batches))
    one = jax.tree.map(lambda x: x[0], batches)
    update_flops = count_flops(jax.make_jaxpr(sac.update)(state, one, jax.random.PRNGKey(0)).jaxpr)[0]
    a = jax.random.normal(jax.random.PRNGKey(3), (MATMUL_N, MATMUL_N))
    matmul = jax.jit(lambda a: a @ a)

    def probe(times):
        start = time.perf_counter()
        jax.block_until_ready(sac_train.update_many_jit(state, batches, jax.random.PRNGKey(1)))
        times["update"].append((time.perf_counter() - start) / 50)
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        times["matmul"].append(time.perf_counter() - start)

    same = {f"num_envs={n}": old_equals_new(n) for n in (1, 3)}
    print(f"old and new train bit-identical parameters from one seed: {same}", flush=True)
    print("compiling (one untimed round) ...", flush=True)
    warm = {"update": [], "matmul": []}
    probe(warm)
    for name, config in configs.items():
        timed_run(name, config, args.learning_starts + 2 * 50)
    load_before = os.getloadavg()
    times = {name: [] for name in configs} | {"update": [], "matmul": []}
    for r in range(args.repeats):
        order = list(configs) if r % 2 == 0 else list(configs)[::-1]  # cancel drifts in load
        for name in order:
            times[name].append(timed_run(name, configs[name], args.learning_starts + args.steps))
        probe(times)
        print(f"round {r + 1}/{args.repeats} (load {os.getloadavg()[0]:.1f}): " + ", ".join(
            f"{n} {1e3 * times[n][-1]['total']:.2f}" for n in configs) + " ms per env step",
            flush=True)
    load_after = os.getloadavg()

    update_ms = 1e3 * float(np.median(times["update"]))
    matmul_gflops = 2.0 * MATMUL_N**3 / float(np.median(times["matmul"])) / 1e9
    old = np.asarray([t["total"] for t in times["old"]])
    print(f"\nHopper-v5, load average {load_before[0]:.1f} -> {load_after[0]:.1f} "
          f"(1/5/15 min after: {', '.join(f'{x:.1f}' for x in load_after)}); one update "
          f"{update_ms:.2f} ms alone ({update_flops / 1e9:.2f} GFLOP: "
          f"{update_flops / 1e6 / update_ms:.0f} GFLOP/s; 2048^3 matmul {matmul_gflops:.0f} GFLOP/s)")
    print(f"{'row':<16} {'utd':>4} {'steps/s':>8} {'(min':>6} {'max)':>6} {'ms/step':>8}"
          f" {'collect':>8} {'update':>8} {'speed-up':>8} {'1M steps':>9}")
    results = []
    for name, config in configs.items():
        t = np.asarray([x["total"] for x in times[name]])
        collect = float(np.median([x["collect"] for x in times[name]]))
        update = float(np.median([x["update"] for x in times[name]]))
        sec = float(np.median(t))
        speedup = float(np.median(old / t))
        row = {"row": name, "updates_per_step": config.updates_per_step,
               "num_envs": config.num_envs, "train_every": config.train_every,
               "env_steps_per_s": 1.0 / sec, "min_env_steps_per_s": 1.0 / float(t.max()),
               "max_env_steps_per_s": 1.0 / float(t.min()), "ms_per_env_step": 1e3 * sec,
               "collect_ms_per_env_step": 1e3 * collect, "update_ms_per_env_step": 1e3 * update,
               "rounds": [{k: 1e3 * v for k, v in x.items()} for x in times[name]],
               "speedup_vs_old": speedup, "hours_per_1m_steps": sec * 1e6 / 3600}
        results.append(row)
        print(f"{name:<16} {config.updates_per_step:>4} {1 / sec:>8.1f} {1 / t.max():>6.1f}"
              f" {1 / t.min():>6.1f} {1e3 * sec:>8.2f} {1e3 * collect:>8.2f} {1e3 * update:>8.2f}"
              f" {speedup:>7.2f}x {sec * 1e6 / 3600:>8.2f}h")
    meta = {"env_id": ENV_ID, "steps": args.steps, "learning_starts": args.learning_starts,
            "repeats": args.repeats, "loadavg_before": load_before, "loadavg_after": load_after,
            "update_ms_alone": update_ms,
            "update_ms_alone_rounds": (1e3 * np.asarray(times["update"])).tolist(),
            "update_gflop": update_flops / 1e9, "matmul_n": MATMUL_N,
            "matmul_gflops": matmul_gflops, "jax": jax.__version__,
            "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "configs": {n: dataclasses.asdict(c) for n, c in configs.items()},
            "old_equals_new": same,
            "note": "shared, noisy CPU; compare ratios from one run, not absolute numbers; "
                    "collect = vector steps without an update call; update = the rest; speed-up "
                    "= median over rounds of old / row (rows of a round run back to back)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
