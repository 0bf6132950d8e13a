"""MuJoCo locomotion datasets made with D4RL's recipe, on gymnasium's ``Hopper-v5``,
``HalfCheetah-v5`` and ``Walker2d-v5``, from behaviour policies the project trains itself.

Recipe (Fu et al. 2020, "D4RL"), step by step:

1. :func:`train_behaviour` trains SAC (:mod:`cdp_jax.agents.sac`) online
   (:mod:`cdp_jax.agents.sac_train`), evaluating the deterministic policy every ``eval_every`` env
   steps and keeping an actor snapshot each time, and records every transition it collects
   (``transitions.h5``).
2. :func:`select_policies`: the **expert** is the best-evaluated snapshot (``expert_by=
   "evaluation"``), or, with ``expert_by="sampled"``, of the snapshots evaluated within
   ``1 - EXPERT_POOL`` (10%) of the best, the one whose episodes return most with their actions
   *sampled*, as the dataset's rollouts act (:func:`sampled_returns`): a SAC policy whose
   deterministic actions stand can still fall often when sampled. The **medium** one is
   where D4RL early-stops its run: the *first* snapshot whose evaluation return is within
   ``MEDIUM_TOLERANCE`` (10%) of ``medium_fraction`` (D4RL: about one third) of the expert's (if
   none is, the closest one no later than the expert). A later snapshot that returns to that
   level after the run has been at expert level would make ``medium-replay`` hold expert data.
3. :func:`build` writes one of

   * ``medium``: ``num_steps`` steps of the medium policy, actions *sampled* from it;
   * ``expert``: the same with the expert policy;
   * ``medium-replay``: the training transitions up to the medium snapshot, in collection order;
   * ``medium-expert``: ``medium`` and ``expert`` concatenated (``2 * num_steps`` steps, as D4RL).

Episodes end where the env ended them (termination, or truncation at the 1000-step limit), plus a
final truncation where the recording stops. ``ref_min_score`` is the mean return of uniform random
actions and ``ref_max_score`` that of the expert acting deterministically (``tanh(mean)``), both on
the registered env and cached in ``<policy_dir>/reference_scores.json`` so the four datasets of an
env share them. Everything is deterministic given the seeds. The snapshots used are copied into
``<dataset path>/behaviour_policy`` (with ``config.json``, ``selection.json``): pass that directory
as ``policy_dir`` to rebuild ``medium`` / ``expert`` / ``medium-expert`` without retraining
(``medium-replay`` needs the training directory's ``transitions.h5``).
:func:`export_policies` writes the two snapshots as ``.npz`` with the reference scores
(:mod:`cdp_jax.data.builders.behaviour`), small enough to ship in git, and the training record
up to the medium snapshot as the actions that regenerate it (:func:`replay_record`); such a
folder is a ``policy_dir`` for every kind.

A run cut short at the medium snapshot holds everything ``medium`` and ``medium-replay`` need
but the expert: pass ``reference=`` (a :func:`load_reference` record of the full run: expert step
and return, both reference scores) and the expert's return sets the medium target and its scores
normalise the datasets. SAC is deterministic given the seed, so rerunning the first steps of a
run reproduces its medium snapshot and training record (``results/behaviour/hopper.json`` holds
the record of the Hopper run the paper study's datasets come from; docs/DATASETS.md).

Differences from D4RL: gymnasium MuJoCo v5 envs (mujoco 3) instead of mujoco-py v3; our own SAC
runs (the expert's return, hence ``ref_max_score``, is what the run reached, not D4RL's 3234.3 for
Hopper); ``ref_min_score`` / ``ref_max_score`` are measured here, not D4RL's constants.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cdp_jax import files, interrupts
from cdp_jax.data.builders import behaviour
from cdp_jax.data.builders.writer import (
    check_target,
    directory_size,
    episode_buffer,
    reported_interrupts,
    write_dataset,
)

ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
KINDS = ("medium", "medium-replay", "expert", "medium-expert")
MEDIUM_FRACTION = 1.0 / 3.0
MEDIUM_TOLERANCE = 0.1  # relative distance to the target return that counts as "reached"
REFERENCE_SEED = 2**20  # reference-score rollouts use their own seeds, shared by all datasets
EXPERT_BY = ("evaluation", "sampled")
EXPERT_POOL = 0.9  # expert_by="sampled" chooses among snapshots evaluated >= 0.9 x the best
SAMPLED_STEPS = 100_000  # env steps of sampled-action rollouts per candidate expert
SAMPLED_SEED = 2


def env_id(env: str) -> str:
    """``"hopper"`` -> ``"Hopper-v5"``; unknown names raise listing the valid ones."""
    if env not in ENVS:
        raise ValueError(f"Unknown locomotion env {env!r}; expected one of {sorted(ENVS)}.")
    return ENVS[env]


def default_dataset_id(env: str, kind: str) -> str:
    """``cdp/<env>/<kind>-v0``, e.g. ``cdp/hopper/medium-replay-v0``."""
    env_id(env)
    if kind not in KINDS:
        raise ValueError(f"Unknown dataset kind {kind!r}; expected one of {list(KINDS)}.")
    return f"cdp/{env}/{kind}-v0"


def train_behaviour(env: str, policy_dir: str | Path, num_steps: int = 1_000_000, seed: int = 0,
                    *, config=None, eval_every: int = 10_000, eval_episodes: int = 10,
                    progress: Callable[[int], None] | None = None,
                    log: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Train the SAC behaviour policies of ``env`` into ``policy_dir`` (see
    :func:`sac_train.train`); ``resume`` continues an interrupted or shorter run there up to
    ``num_steps``.

    Returns ``dict(policy_dir, evaluations, seconds, cpu_seconds)``.
    """
    from cdp_jax.agents import sac, sac_train

    config = config or sac.default_config()
    policy_dir = Path(policy_dir)
    if (policy_dir / "evaluations.json").exists() and not resume:
        raise FileExistsError(f"{policy_dir} already holds a training run; choose another "
                              "--policy-dir, delete it, or resume it (--resume).")
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        _, evaluations = sac_train.train(env_id(env), config, num_steps, seed,
                                         out_dir=policy_dir, eval_every=eval_every,
                                         eval_episodes=eval_episodes, record_transitions=True,
                                         progress=progress, log=log, resume=resume)
    except KeyboardInterrupt as err:
        from cdp_jax import checkpoint  # noqa: PLC0415

        kept = checkpoint.list_steps(policy_dir / "state")
        where = (f"its last state checkpoint is kept: env step {kept[-1]} ({policy_dir / 'state'})"
                 if kept else "it had written no state checkpoint yet")
        raise interrupts.Interrupted(
            f"interrupted: SAC training of {env} in {policy_dir} stopped; {where}",
            signum=interrupts.signal_of(err),
            then=interrupts.Then("resume with", extra=("--resume",)) if kept else
            interrupts.Then("start it again with")) from None
    return {"policy_dir": str(policy_dir), "evaluations": evaluations,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - start_cpu}


def select_policies(policy_dir: str | Path, *, medium_fraction: float = MEDIUM_FRACTION,
                    medium_step: int | None = None, expert_step: int | None = None,
                    reference: dict | None = None, expert_by: str = "evaluation",
                    env: str | None = None, sampled_steps: int = SAMPLED_STEPS,
                    on_sampled: Callable[[int, dict, int, int], None] | None = None) -> dict:
    """Which snapshots are the medium and expert policies (module docstring, step 2).

    ``selection.json`` in ``policy_dir`` (written beside a dataset), or the two policies of a
    shipped folder (:func:`export_policies`), take precedence; explicit
    ``medium_step`` / ``expert_step`` override either. ``reference`` (:func:`load_reference`)
    supplies the expert of a longer run of which ``policy_dir`` holds the beginning.
    ``expert_by="sampled"`` (needs ``env``) ranks the candidate experts by
    :func:`sampled_returns` over ``sampled_steps`` steps each (``on_sampled``: its progress
    callback). Returns
    ``dict(medium_step, medium_return, expert_step, expert_return)``; the returns are the
    deterministic evaluations' in either case.
    """
    if expert_by not in EXPERT_BY:
        raise ValueError(f"expert_by must be one of {EXPERT_BY}, got {expert_by!r}")
    if expert_by == "sampled" and env is None:
        raise ValueError('expert_by="sampled" needs env= to roll the candidates out')
    policy_dir = Path(policy_dir)
    saved = policy_dir / "selection.json"
    if behaviour.is_shipped(policy_dir) or saved.exists():
        selection = (behaviour.selection(policy_dir) if behaviour.is_shipped(policy_dir)
                     else json.loads(saved.read_text()))
        evals = {selection["medium_step"]: selection["medium_return"],
                 selection["expert_step"]: selection["expert_return"]}
    else:
        path = policy_dir / "evaluations.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no behaviour policies under {policy_dir} (no evaluations.json / selection.json)"
                "; train them first: python experiments/make_dataset.py locomotion-train --env "
                "<env> --policy-dir <dir>")
        evals = {int(e["env_steps"]): float(e["return_mean"])
                 for e in json.loads(path.read_text())}
        selection = {}
    if reference is not None:
        if expert_step not in (None, reference["expert_step"]):
            raise ValueError(f"expert_step={expert_step} contradicts the reference's expert "
                             f"(step {reference['expert_step']})")
        expert_step = reference["expert_step"]
        evals[expert_step] = reference["expert_return"]
    if expert_step is None and "expert_step" in selection:
        expert_step = selection["expert_step"]
    if expert_step is None:
        score = evals
        if expert_by == "sampled":
            pool = [s for s in evals if evals[s] >= EXPERT_POOL * max(evals.values())]
            rows = sampled_returns(env, policy_dir, pool, num_steps=sampled_steps,
                                   progress=on_sampled)
            score = {s: rows[s]["return_mean"] for s in pool}
        expert_step = max(score, key=lambda s: (score[s], -s))
    if medium_step is None:
        target = medium_fraction * evals[expert_step]
        candidates = sorted(s for s in evals if s <= expert_step)
        reached = [s for s in candidates if abs(evals[s] - target) <= MEDIUM_TOLERANCE * target]
        medium_step = selection.get("medium_step", reached[0] if reached else min(
            candidates, key=lambda s: (abs(evals[s] - target), s)))
    for name, step in (("medium_step", medium_step), ("expert_step", expert_step)):
        if step not in evals:
            raise ValueError(f"{name}={step} has no snapshot under {policy_dir}; evaluated "
                             f"steps: {sorted(evals)}")
    return {"medium_step": int(medium_step), "medium_return": evals[medium_step],
            "expert_step": int(expert_step), "expert_return": evals[expert_step]}


def sampled_returns(env: str, policy_dir: str | Path, steps, *, num_steps: int = SAMPLED_STEPS,
                    seed: int = SAMPLED_SEED, num_envs: int = 10,
                    progress: Callable[[int, dict, int, int], None] | None = None
                    ) -> dict[int, dict]:
    """How each snapshot in ``steps`` of a :func:`train_behaviour` directory does with its actions
    *sampled*, as :func:`build`'s rollouts act: ``{step: dict(return_mean, return_se,
    length_mean, num_episodes)}`` over the episodes that ended (terminated, or reached the env's
    time limit) within ``num_steps`` env steps of :func:`rollouts`. Cached per step in
    ``<policy_dir>/sampled_returns.json`` (keyed by ``num_steps``, ``seed`` and ``num_envs``).
    ``progress(step, row, done, total)`` is called after each snapshot, cached ones included."""
    import gymnasium as gym

    from cdp_jax.agents import sac_train

    policy_dir = Path(policy_dir)
    cache_path = policy_dir / "sampled_returns.json"
    key = f"{num_steps}/{seed}/{num_envs}"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, ValueError):  # damaged: computed again and rewritten
        cache = {}
    table = cache.setdefault(key, {})
    limit = gym.spec(env_id(env)).max_episode_steps
    for done, step in enumerate(sorted(steps), 1):
        if str(step) not in table:
            state, _ = sac_train.load_actor(policy_dir, step)
            ended = [ep for ep in rollouts(state, env, num_steps, seed, num_envs=num_envs)
                     if ep["terminations"][-1] or len(ep["actions"]) == limit]
            if not ended:
                raise ValueError(f"no episode of snapshot {step} ended within {num_steps} "
                                 "steps; raise num_steps")
            returns = np.array([float(np.sum(ep["rewards"])) for ep in ended])
            table[str(step)] = {
                "return_mean": float(returns.mean()),
                "return_se": (float(returns.std(ddof=1) / np.sqrt(len(returns)))
                              if len(returns) > 1 else 0.0),
                "length_mean": float(np.mean([len(ep["actions"]) for ep in ended])),
                "num_episodes": len(ended)}
            files.write_json(cache_path, cache)
        if progress is not None:
            progress(step, table[str(step)], done, len(steps))
    return {int(step): table[str(step)] for step in steps}


def _make_vector_env(env_name: str, num_envs: int):
    import gymnasium as gym

    return gym.vector.SyncVectorEnv([lambda: gym.make(env_name)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def rollouts(state, env: str, num_steps: int, seed: int, *, num_envs: int = 10,
             deterministic: bool = False,
             progress: Callable[[int], None] | None = None) -> list[dict]:
    """Exactly ``num_steps`` steps of the SAC policy in ``state`` (``None``: uniform random).

    ``num_envs`` envs step together; episodes are returned in the order they ended, then the ones
    still running (cut: truncation), the last trimmed so the total is ``num_steps``. Each is a
    dict of ``observations (T + 1, O)`` (float64), ``actions``, ``rewards``, ``terminations``,
    ``truncations`` and its reset ``seed``.
    """
    import jax
    import jax.numpy as jnp

    from cdp_jax.agents import sac_train

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    envs = _make_vector_env(env_id(env), num_envs)
    scale = sac_train.action_scaler(envs.single_action_space)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    seeds = [int(s) for s in rng.integers(2**31, size=num_envs)]
    obs, _ = envs.reset(seed=seeds)
    running = [_new_episode(obs[i], seeds[i]) for i in range(num_envs)]
    done_episodes, total, t = [], 0, 0
    try:
        while total < num_steps:
            if state is None:
                action = rng.uniform(-1.0, 1.0, (num_envs, envs.single_action_space.shape[0]))
            else:
                action = np.asarray(sac_train.act_jit(state, jnp.asarray(obs, jnp.float32),
                                                       jax.random.fold_in(key, t), deterministic))
            env_action = scale(action)
            obs, reward, terminated, truncated, info = envs.step(env_action)
            t += 1
            for i in range(num_envs):
                ep = running[i]
                final = terminated[i] or truncated[i]
                ep["observations"].append(info["final_obs"][i] if final else obs[i])
                ep["actions"].append(env_action[i])
                ep["rewards"].append(float(reward[i]))
                ep["terminations"].append(bool(terminated[i]))
                ep["truncations"].append(bool(truncated[i]) and not terminated[i])
                if final:
                    done_episodes.append(ep)
                    # SAME_STEP autoreset reseeds nothing: record the env's own continuation.
                    running[i] = _new_episode(obs[i], None)
            total += num_envs
            if progress is not None:
                progress(num_envs)
    finally:
        envs.close()
    episodes, count = [], 0
    for ep in done_episodes + [ep for ep in running if ep["actions"]]:
        if count >= num_steps:
            break
        keep = min(len(ep["actions"]), num_steps - count)
        episodes.append(_finish(ep, keep))
        count += keep
    return episodes


def _new_episode(obs, seed):
    return {"observations": [obs], "actions": [], "rewards": [], "terminations": [],
            "truncations": [], "seed": seed}


def _finish(ep: dict, keep: int) -> dict:
    """Arrays of the first ``keep`` steps; a cut episode ends in a truncation."""
    term = np.asarray(ep["terminations"][:keep], bool)
    trunc = np.asarray(ep["truncations"][:keep], bool)
    if not (term[-1] or trunc[-1]):
        trunc[-1] = True
    return {"observations": np.asarray(ep["observations"][:keep + 1], np.float64),
            "actions": np.asarray(ep["actions"][:keep], np.float32),
            "rewards": np.asarray(ep["rewards"][:keep], np.float64),
            "terminations": term, "truncations": trunc, "seed": ep["seed"]}


def replay_episodes(policy_dir: str | Path, up_to_step: int, num_steps: int | None = None, *,
                    progress: Callable[[int], None] | None = None) -> list[dict]:
    """Episodes of the SAC training record up to env step ``up_to_step``: the run's
    ``transitions.h5``, or a shipped folder's record regenerated by :func:`replay_record`.

    Per env, episodes end at each termination / truncation; the episode running at
    ``up_to_step`` is cut there (truncation). Ordered by the vector step they ended at, then env.
    With ``num_steps``, only the episodes starting in the last ``num_steps`` env steps before
    ``up_to_step`` are kept (whole episodes, so at most ``num_steps`` steps). ``progress`` is
    called with env steps read or replayed.
    """
    data = _training_record(Path(policy_dir), up_to_step, progress)
    rows, num_envs = data["rewards"].shape
    first_row = 0 if num_steps is None else max(0, rows - num_steps // num_envs)
    found = []  # (end row, env, episode)
    for e in range(num_envs):
        ends = np.flatnonzero(data["terminations"][:, e] | data["truncations"][:, e])
        starts = np.concatenate([[0], ends + 1])
        ends = np.append(ends, rows - 1) if (ends.size == 0 or ends[-1] != rows - 1) else ends
        for s, t in zip(starts, ends, strict=False):
            if s > t or s < first_row:
                continue
            sl = slice(s, t + 1)
            term = data["terminations"][sl, e].astype(bool)
            trunc = data["truncations"][sl, e].astype(bool) & ~term
            if not (term[-1] or trunc[-1]):
                trunc[-1] = True
            found.append((t, e, {
                "observations": np.concatenate([data["observations"][sl, e],
                                                data["next_observations"][t:t + 1, e]]),
                "actions": data["actions"][sl, e].astype(np.float32),
                "rewards": data["rewards"][sl, e], "terminations": term,
                "truncations": trunc, "seed": None}))
    return [ep for _, _, ep in sorted(found, key=lambda x: (x[0], x[1]))]


def _training_record(policy_dir: Path, up_to_step: int,
                     progress: Callable[[int], None] | None) -> dict:
    """The training record's rows up to env step ``up_to_step``, ``(rows, num_envs, ...)``."""
    path = policy_dir / "transitions.h5"
    if path.exists():
        data = _read_transitions(path, up_to_step)
        if progress is not None:
            progress(data["rewards"].size)
        return data
    entry = (behaviour.read_manifest(policy_dir).get("record")
             if behaviour.is_shipped(policy_dir) else None)
    if entry is not None:
        return replay_record(policy_dir, up_to_step // entry["num_envs"], progress=progress)
    raise FileNotFoundError(f"{path} not found: medium-replay needs the training record of "
                            "train_behaviour, or a shipped folder exported with it (a dataset's "
                            "orbax behaviour_policy copy has none).")


def _read_transitions(path: Path, up_to_step: int) -> dict:
    """The rows of a ``transitions.h5`` up to env step ``up_to_step`` (all of it if shorter)."""
    import h5py

    with h5py.File(path, "r") as f:
        rows = min(up_to_step // f["rewards"].shape[1], f["rewards"].shape[0])
        return {k: f[k][:rows] for k in f}


def replay_record(policy_dir: str | Path, rows: int | None = None, *,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Regenerate the first ``rows`` rows (default: all) of a shipped folder's SAC training
    record by stepping the run's envs, reset with its seeds, with its recorded actions
    (:func:`cdp_jax.data.builders.behaviour.load_record_actions`).

    Returns ``transitions.h5``'s arrays, ``(rows, num_envs, ...)``: ``observations``,
    ``next_observations``, ``actions`` (float64), ``rewards``, ``terminations``, ``truncations``.
    Every whole block of :data:`~cdp_jax.data.builders.behaviour.RECORD_BLOCK` rows (and the
    last, partial one when all rows are replayed) must match the manifest's sha256; else
    ``ValueError`` names the first env step range that differs: the simulator on this machine
    does not reproduce the one the record was made with (versions in the manifest).
    """
    from cdp_jax.agents import sac_train

    policy_dir = Path(policy_dir)
    actions, entry = behaviour.load_record_actions(policy_dir)
    manifest = behaviour.read_manifest(policy_dir)
    rows = entry["rows"] if rows is None else min(int(rows), entry["rows"])
    num_envs, obs_dim = entry["num_envs"], manifest["dims"]["obs_dim"]
    record = {"observations": np.zeros((rows, num_envs, obs_dim)),
              "next_observations": np.zeros((rows, num_envs, obs_dim)),
              "actions": actions[:rows], "rewards": np.zeros((rows, num_envs)),
              "terminations": np.zeros((rows, num_envs), bool),
              "truncations": np.zeros((rows, num_envs), bool)}
    resets = {r["row"]: r["seeds"] for r in entry["resets"]}
    envs = sac_train.make_envs(manifest["env_id"], num_envs,
                               manifest["training"].get("env_kwargs"))
    try:
        for i in range(rows):
            if i in resets:
                if i > 0:  # a resume: the run cut its running episodes here (sac_train._resume)
                    record["truncations"][i - 1] = ~record["terminations"][i - 1]
                obs, _ = envs.reset(seed=resets[i])
            obs, transition = sac_train.vector_env_step(envs, obs, actions[i])
            for k in behaviour.RECORD_KEYS:
                record[k][i] = transition[k]
            if progress is not None:
                progress(num_envs)
    finally:
        envs.close()
    block = entry["block_rows"]
    checked = rows if rows == entry["rows"] else rows - rows % block
    got = behaviour.record_digests({k: v[:checked] for k, v in record.items()}, block)
    for b, (mine, theirs) in enumerate(zip(got, entry["block_sha256"], strict=False)):
        if mine != theirs:
            first, last = b * block * num_envs, min((b + 1) * block, rows) * num_envs
            raise ValueError(
                f"replaying {policy_dir / entry['file']} does not regenerate the training record "
                f"from env step {first} on (block {b}, steps {first}-{last}): the simulator here "
                f"({_simulator_versions()}) steps differently from the recording's "
                f"({entry['versions']}), or the actions are not the run's. Build medium-replay "
                "where the run's transitions.h5 is, or with the recording's versions.")
    return record


def _simulator_versions() -> dict:
    import gymnasium
    import mujoco

    return {"mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__}


def _export_record(policy_dir: Path, out: Path, medium_step: int, training: dict,
                   progress: Callable[[int], None] | None) -> dict:
    """Ship the training record up to ``medium_step`` (:func:`behaviour.write_record`), then
    replay it (:func:`replay_record`) to check it regenerates ``transitions.h5`` bit for bit."""
    from cdp_jax.agents import sac_train

    record = _read_transitions(policy_dir / "transitions.h5", medium_step)
    rows, num_envs = record["rewards"].shape
    seed = training["seed"]
    resets = [{"row": step // num_envs, "seeds": sac_train.reset_seeds(seed, step, num_envs)}
              for step in (0, *training.get("resumed_at", ())) if step // num_envs < rows]
    behaviour.write_record(out, record["actions"], env_steps=rows * num_envs, resets=resets,
                           digests=behaviour.record_digests(record),
                           versions=_simulator_versions())
    try:
        replay_record(out, progress=progress)
    except ValueError as err:
        behaviour.drop_record(out)
        raise ValueError(
            f"the record of {policy_dir} up to env step {medium_step} cannot be shipped: {err} "
            "(a run resumed by a version that did not list its resumes in config.json "
            "'resumed_at' replays wrongly too). Export without it: record=False / "
            "--no-record.") from None
    return behaviour.read_manifest(out)


REFERENCE_FIELDS = ("env", "expert_step", "expert_return", "ref_min_score", "ref_max_score",
                    "num_random_episodes", "num_expert_episodes")


def load_reference(path: str | Path, env: str) -> dict:
    """The record of a full behaviour run (JSON with :data:`REFERENCE_FIELDS`, e.g.
    ``results/behaviour/hopper.json``) for :func:`build`'s ``reference``; checked against
    ``env``."""
    record = json.loads(Path(path).read_text())
    missing = [k for k in REFERENCE_FIELDS if k not in record]
    if missing:
        raise ValueError(f"{path}: a reference record needs {', '.join(missing)}")
    if record["env"] != env:
        raise ValueError(f"{path} is the record of {record['env']!r}, not {env!r}")
    return record


def reference_scores(env: str, policy_dir: str | Path, expert_step: int, *,
                     num_random_episodes: int = 100, num_expert_episodes: int = 10) -> dict:
    """``ref_min_score`` (uniform random actions) and ``ref_max_score`` (deterministic expert),
    mean returns on the registered env, cached in ``<policy_dir>/reference_scores.json``."""
    from cdp_jax.agents import sac_train

    cache = Path(policy_dir) / "reference_scores.json"
    key = {"expert_step": expert_step, "num_random_episodes": num_random_episodes,
           "num_expert_episodes": num_expert_episodes}
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
        except (OSError, ValueError):  # damaged: computed again and rewritten
            saved = {}
        if isinstance(saved, dict) and all(saved.get(k) == v for k, v in key.items()):
            return saved
    random_returns = _episode_returns(None, env, num_random_episodes, REFERENCE_SEED)
    state, _ = sac_train.load_actor(policy_dir, expert_step)
    expert = sac_train.evaluate_policy(state, env_id(env), num_expert_episodes, REFERENCE_SEED + 1)
    scores = {**key, "ref_min_score": float(np.mean(random_returns)),
              "ref_min_std": float(np.std(random_returns)),
              "ref_max_score": expert["return_mean"], "ref_max_std": expert["return_std"]}
    files.write_json(cache, scores)
    return scores


def _episode_returns(state, env: str, num_episodes: int, seed: int) -> np.ndarray:
    import gymnasium as gym

    env_ = gym.make(env_id(env))
    rng = np.random.default_rng(seed)
    returns = np.zeros(num_episodes)
    for i in range(num_episodes):
        env_.reset(seed=int(rng.integers(2**31)))
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env_.step(
                rng.uniform(env_.action_space.low, env_.action_space.high))
            returns[i] += reward
            done = terminated or truncated
    env_.close()
    return returns


def _copy_policies(policy_dir: Path, target: Path, selection: dict, references: dict) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if behaviour.is_shipped(policy_dir):  # the copy is a shipped folder too
        tmp.mkdir(parents=True)
        shutil.copyfile(policy_dir / behaviour.MANIFEST, tmp / behaviour.MANIFEST)
        manifest = behaviour.read_manifest(policy_dir)
        for entry in [*manifest["policies"].values(), *filter(None, [manifest.get("record")])]:
            shutil.copyfile(policy_dir / entry["file"], tmp / entry["file"])
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return
    (tmp / "snapshots").mkdir(parents=True)
    shutil.copyfile(policy_dir / "config.json", tmp / "config.json")
    for step in sorted({selection["medium_step"], selection["expert_step"]}):
        name = f"step_{step:09d}"
        if (policy_dir / "snapshots" / name).exists():  # a reference's expert is not here
            shutil.copytree(policy_dir / "snapshots" / name, tmp / "snapshots" / name)
    (tmp / "selection.json").write_text(json.dumps(selection, indent=2))
    (tmp / "reference_scores.json").write_text(json.dumps(references, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def export_policies(env: str, policy_dir: str | Path, out: str | Path, *,
                    medium_step: int | None = None, expert_step: int | None = None,
                    medium_fraction: float = MEDIUM_FRACTION, num_random_episodes: int = 100,
                    num_expert_episodes: int = 10, expert_by: str = "evaluation",
                    on_sampled: Callable[[int, dict, int, int], None] | None = None,
                    record: bool = True, progress: Callable[[int], None] | None = None) -> dict:
    """Write the medium and expert snapshots :func:`select_policies` picks in ``policy_dir`` (a
    :func:`train_behaviour` directory or a dataset's ``behaviour_policy``), with the reference
    scores (:func:`reference_scores`, computed and cached in ``policy_dir`` if not there yet), as
    a shipped folder ``out`` (``medium.npz``, ``expert.npz``, ``policies.json``; format in
    :mod:`cdp_jax.data.builders.behaviour`). Returns the manifest.

    With ``record`` (the default) and a ``transitions.h5`` in ``policy_dir``, the training record
    up to the medium snapshot ships too (``record.npz``: what ``medium-replay`` needs), checked
    by replaying it (:func:`replay_record`, ``progress`` called with env steps replayed; Hopper's
    280k steps: 3.4 MiB, replayed in about 25 s on an idle 2-core CPU).
    """
    from cdp_jax.agents import sac_train

    policy_dir = Path(policy_dir)
    if behaviour.is_shipped(policy_dir):
        raise ValueError(f"{policy_dir} is already a shipped folder; copy it instead")
    training = json.loads((policy_dir / "config.json").read_text())
    if training["env_id"] != env_id(env):
        raise ValueError(f"{policy_dir} holds {training['env_id']} policies, not {env_id(env)}")
    selection = select_policies(policy_dir, medium_fraction=medium_fraction,
                                medium_step=medium_step, expert_step=expert_step,
                                expert_by=expert_by, env=env, on_sampled=on_sampled)
    refs = reference_scores(env, policy_dir, selection["expert_step"],
                            num_random_episodes=num_random_episodes,
                            num_expert_episodes=num_expert_episodes)
    snapshots = {}
    for which in behaviour.POLICIES:
        state, _ = sac_train.load_actor(policy_dir, selection[f"{which}_step"])
        snapshots[which] = (state.actor_params, selection[f"{which}_step"],
                            selection[f"{which}_return"])
    manifest = behaviour.write_policies(
        out, env=env, env_id=env_id(env), config=state.config,
        dims={"obs_dim": state.obs_dim, "action_dim": state.action_dim}, snapshots=snapshots,
        reference_scores=refs, training=training)
    behaviour.drop_record(out)  # a record from an earlier export of another selection
    if record and (policy_dir / "transitions.h5").exists():
        manifest = _export_record(policy_dir, Path(out), selection["medium_step"], training,
                                  progress)
    return manifest


def _check_shipped(policy_dir: Path, env: str, kind: str, reference: dict | None) -> None:
    manifest = behaviour.read_manifest(policy_dir)
    if manifest["env"] != env:
        raise ValueError(f"{policy_dir} holds {manifest['env']!r} policies, not {env!r}")
    if kind == "medium-replay" and "record" not in manifest:
        raise ValueError(
            f"medium-replay cannot be built from {policy_dir}: it is the SAC run's training "
            "record up to the medium snapshot, not rollouts of a policy, and this folder was "
            "exported without it; pass the locomotion-train directory that holds its "
            "transitions.h5, or export the folder from there again")
    if reference is not None:
        raise ValueError(f"{policy_dir} carries its own reference scores; drop --reference")


def build(env: str, kind: str, policy_dir: str | Path, num_steps: int | None = 1_000_000,
          seed: int = 0, dataset_id: str | None = None, *, medium_step: int | None = None,
          expert_step: int | None = None, medium_fraction: float = MEDIUM_FRACTION,
          num_envs: int = 10, num_random_episodes: int = 100, num_expert_episodes: int = 10,
          reference: dict | None = None, expert_by: str = "evaluation",
          on_sampled: Callable[[int, dict, int, int], None] | None = None,
          overwrite: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Write one locomotion dataset (``kind`` in :data:`KINDS`); return a summary dict.

    Args:
        env: ``hopper``, ``halfcheetah`` or ``walker2d``.
        kind: ``medium``, ``medium-replay``, ``expert`` or ``medium-expert``.
        policy_dir: a :func:`train_behaviour` directory, a dataset's ``behaviour_policy``, or
            a shipped folder (:func:`export_policies`; ``medium-replay`` only if exported with
            the training record).
        num_steps: steps per policy (``medium-expert``: twice this); for ``medium-replay`` an
            optional cap (the last whole episodes before the medium point), ``None`` = all.
        seed: rollout seed (``expert`` uses ``seed + 1`` inside ``medium-expert``).
        medium_step, expert_step, medium_fraction: override the snapshot selection.
        expert_by, on_sampled: ``"evaluation"`` or ``"sampled"``, and the latter's progress
            callback (:func:`select_policies`).
        num_envs: vector envs stepping together during rollouts.
        num_random_episodes, num_expert_episodes: episodes for the reference scores.
        reference: the expert and reference scores of a longer run (:func:`load_reference`)
            whose beginning ``policy_dir`` holds; ``medium`` and ``medium-replay`` only.

    Returns:
        ``dict(dataset_id, path, num_steps, num_episodes, size_bytes, ref_min_score,
        ref_max_score, medium_step, expert_step, medium_return, expert_return,
        dataset_return_mean, seconds, cpu_seconds)``: ``seconds`` is wall time,
        ``cpu_seconds`` this process's CPU time.
    """
    from cdp_jax.agents import sac_train

    start, start_cpu = time.perf_counter(), time.process_time()
    dataset_id = dataset_id or default_dataset_id(env, kind)
    default_dataset_id(env, kind)  # validates env and kind
    if kind != "medium-replay" and (num_steps is None or num_steps < 1):
        raise ValueError(f"num_steps must be >= 1 for {kind}, got {num_steps}")
    check_target(dataset_id, overwrite)
    with reported_interrupts(dataset_id):  # one line, saying what was written
        policy_dir = Path(policy_dir)
        if reference is not None and kind not in ("medium", "medium-replay"):
            raise ValueError(f"{kind} needs the expert snapshot itself; a reference record only "
                             "builds medium and medium-replay")
        shipped = behaviour.is_shipped(policy_dir)
        if shipped:
            _check_shipped(policy_dir, env, kind, reference)
        selection = select_policies(policy_dir, medium_fraction=medium_fraction,
                                    medium_step=medium_step, expert_step=expert_step,
                                    reference=reference, expert_by=expert_by, env=env,
                                    on_sampled=on_sampled)
        if reference is not None:
            refs = {k: reference[k] for k in REFERENCE_FIELDS if k != "env"}
        elif shipped:
            refs = behaviour.read_manifest(policy_dir)["reference_scores"]
        else:
            refs = reference_scores(env, policy_dir, selection["expert_step"],
                                    num_random_episodes=num_random_episodes,
                                    num_expert_episodes=num_expert_episodes)
        episodes = []
        if kind == "medium-replay":
            episodes = replay_episodes(policy_dir, selection["medium_step"], num_steps,
                                       progress=progress)
        for which, offset in (("medium", 0), ("expert", 1)):
            if kind in (which, "medium-expert"):
                step = selection[f"{which}_step"]
                state, _ = (behaviour.load_actor_at_step(policy_dir, step) if shipped
                            else sac_train.load_actor(policy_dir, step))
                episodes += rollouts(state, env, num_steps, seed + offset, num_envs=num_envs,
                                     progress=progress)
        buffers = [episode_buffer(i, ep["observations"], ep["actions"], ep["rewards"],
                                  ep["terminations"], ep["truncations"], seed=ep["seed"])
                   for i, ep in enumerate(episodes)]
        returns = [float(np.sum(ep["rewards"])) for ep in episodes]
        recipe = {
            "medium": f"{num_steps} steps of the medium SAC policy (snapshot at env step "
                      f"{selection['medium_step']}, evaluation return {selection['medium_return']:.1f}"
                      "), actions sampled from the policy",
            "expert": f"{num_steps} steps of the expert SAC policy (snapshot at env step "
                      f"{selection['expert_step']}, evaluation return {selection['expert_return']:.1f}"
                      "), actions sampled from the policy",
            "medium-replay": f"the SAC training transitions up to the medium snapshot (env step "
                             f"{selection['medium_step']})"
                             + (f", last {num_steps} steps' whole episodes" if num_steps else ""),
            "medium-expert": f"medium ({num_steps} steps, snapshot {selection['medium_step']}) then "
                             f"expert ({num_steps} steps, snapshot {selection['expert_step']}) "
                             "rollouts, actions sampled",
        }[kind]
        path = write_dataset(
            dataset_id, buffers, env=env_id(env), eval_env=env_id(env),
            ref_min_score=refs["ref_min_score"], ref_max_score=refs["ref_max_score"],
            overwrite=overwrite, algorithm_name=f"SAC behaviour policies ({kind}, D4RL recipe)",
            code_permalink="cdp_jax/data/builders/locomotion.py",
            description=(
                f"{env_id(env)} {kind}: {recipe}; seed {seed}. Built by cdp_jax with D4RL's recipe. "
                f"ref_min_score = mean return of uniform random actions "
                f"({refs['num_random_episodes']} episodes), ref_max_score = mean return of the "
                f"expert snapshot acting deterministically ({refs['num_expert_episodes']} episodes), "
                "so a normalised score of 100 is our expert, 0 random (measured here; D4RL's own "
                "constants differ, see docs/DATASETS.md). Behaviour policies: behaviour_policy/."
                + ("" if reference is None else
                   f" The expert and both reference scores are those of the full run this one "
                   f"repeats the start of: {reference.get('source', 'a reference record')}.")),
        )
        with interrupts.deferred():  # the dataset's behaviour_policy/ whole
            _copy_policies(policy_dir, path / "behaviour_policy", selection, refs)
        return {"dataset_id": dataset_id, "path": str(path), "kind": kind,
                "num_steps": int(sum(len(ep["actions"]) for ep in episodes)),
                "num_episodes": len(episodes), "size_bytes": directory_size(path),
                "ref_min_score": refs["ref_min_score"], "ref_max_score": refs["ref_max_score"],
                **selection, "dataset_return_mean": float(np.mean(returns)),
                "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - start_cpu}
