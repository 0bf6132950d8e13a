"""The online host loop of Soft Actor-Critic (:mod:`cdp_jax.agents.sac`): train, evaluate, snapshot.

:func:`train` trains the agent on vectorised gymnasium envs stepped by :func:`vector_env_step` with
the actions of all envs from one jitted :func:`explore` call, a numpy replay buffer
(:func:`replay_insert`), ``K`` jitted updates (:func:`update_many`) per call, evaluation
(:func:`evaluate_policy`), and orbax snapshots of the actor (``cdp_jax.checkpoint``, read back by
:func:`load_actor`) plus an optional HDF5 record of every transition collected
(:class:`TransitionRecorder`, for D4RL's "medium-replay" recipe). The policy acts in ``[-1, 1]``;
:func:`action_scaler` maps its actions onto the env's action box. Shapes: observations
``(B, obs_dim)``, actions ``(B, action_dim)``.

Cost (``benchmarks/sac_throughput.py``): one update is about 0.56 GFLOP (batch 256, 256-256 nets),
so on a CPU the update, not the loop, sets the rate at one update per env step; the knob that
trades learning per env step for speed is ``updates_per_step`` (the UTD ratio, may be < 1).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax.agents.common import check_positive, config_from_dict, config_to_dict
from cdp_jax.agents.sac import (
    SACConfig,
    SACState,
    act,
    explore,
    init,
    update_many,
    updates_per_call,
)

# Module-level jits, shared by the loop here, the dataset builders and the benchmark: the config is
# static (in the state, or a static argument), so every train / evaluation call with the same
# config and shapes reuses one compilation.
update_many_jit = jax.jit(update_many)
act_jit = jax.jit(act, static_argnames="deterministic")
explore_jit = jax.jit(explore, static_argnames=("config", "action_dim"))


def make_envs(env_id: str, num_envs: int, env_kwargs: dict | None):
    """``num_envs`` copies of ``gym.make(env_id, **env_kwargs)`` in a ``SyncVectorEnv`` with the
    ``SAME_STEP`` autoreset mode that :func:`vector_env_step` needs."""
    import gymnasium as gym

    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **(env_kwargs or {}))] * num_envs,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def run_rng(seed: int, step: int = 0) -> np.random.Generator:
    """The host-side generator of a :func:`train` run that starts (``step = 0``) or resumes at env
    step ``step``: its first draw seeds the envs' resets (:func:`reset_seeds`), later ones the
    random actions and the replay batches."""
    return np.random.default_rng(seed if step == 0 else [seed, step])


def reset_seeds(seed: int, step: int, num_envs: int) -> list[int]:
    """The seeds :func:`train` resets its ``num_envs`` envs with when it starts or resumes at env
    step ``step``; every later reset is the vector env's own autoreset."""
    return [int(s) for s in run_rng(seed, step).integers(2**31, size=num_envs)]


def action_scaler(space) -> Callable[[np.ndarray], np.ndarray]:
    """Map ``[-1, 1]`` policy actions affinely onto the env's (finite) action box."""
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"SAC needs a bounded Box action space, got {space}.")
    return lambda a: low + 0.5 * (np.asarray(a, np.float64) + 1.0) * (high - low)


def vector_env_step(envs, obs: np.ndarray, env_action: np.ndarray) -> tuple[np.ndarray, dict]:
    """One step of a vector env in gymnasium's ``SAME_STEP`` autoreset mode (:func:`make_envs`).

    Returns ``(obs to act on next, transition)``; ``transition`` holds ``observations``, ``actions``
    (the env's), ``rewards``, ``next_observations``, ``terminations``, ``truncations``, each
    ``(num_envs, ...)``. Where an episode ended at this step the vector env has already reset that
    env: its ``next_observations`` row is the episode's final observation (``info["final_obs"]``),
    while the returned observation is the reset one. ``terminations`` (the MDP ended: no bootstrap)
    and ``truncations`` (a time limit: bootstrap from the final observation) are the env's flags.
    """
    mode = envs.metadata.get("autoreset_mode")
    if getattr(mode, "value", mode) != "SameStep":
        raise ValueError(f"vector_env_step needs autoreset_mode=SAME_STEP, got {mode!r}.")
    next_obs, reward, terminated, truncated, info = envs.step(env_action)
    final = np.array(next_obs, dtype=np.float64)
    for i in np.flatnonzero(terminated | truncated):
        final[i] = info["final_obs"][i]
    return next_obs, {"observations": obs, "actions": env_action, "rewards": reward,
                      "next_observations": final, "terminations": terminated,
                      "truncations": truncated}


def replay_insert(buffer: dict, cursor: int, transition: dict, policy_action: np.ndarray) -> int:
    """Write one vector step (:func:`vector_env_step`'s ``transition``, ``num_envs`` rows) into the
    ring buffer ``buffer`` at row ``cursor``; return the next cursor.

    ``actions`` are the policy's, in ``[-1, 1]``; ``terminals`` are the terminations only: a
    truncated episode bootstraps from its final observation.
    """
    capacity, num = buffer["rewards"].shape[0], policy_action.shape[0]
    rows = (cursor + np.arange(num)) % capacity
    buffer["observations"][rows] = transition["observations"]
    buffer["actions"][rows] = policy_action
    buffer["rewards"][rows] = transition["rewards"]
    buffer["next_observations"][rows] = transition["next_observations"]
    buffer["terminals"][rows] = transition["terminations"]
    return int((cursor + num) % capacity)


def evaluate_policy(state: SACState, env_id: str, num_episodes: int, seed: int, *,
                    deterministic: bool = True, num_envs: int | None = None,
                    env_kwargs: dict | None = None) -> dict:
    """Returns of ``num_episodes`` episodes (``cdp_jax.evaluation.evaluate``'s dict)."""
    import gymnasium as gym

    from cdp_jax import evaluation

    envs = evaluation.make_vector_env(lambda: gym.make(env_id, **(env_kwargs or {})),
                                      num_envs or min(num_episodes, 10))
    scale = action_scaler(envs.single_action_space)
    policy = lambda obs, k: scale(act_jit(state, jnp.asarray(obs, jnp.float32), k, deterministic))
    try:
        return evaluation.evaluate(policy, envs, jax.random.PRNGKey(seed),
                                   num_episodes=num_episodes, seed=seed)
    finally:
        envs.close()


class TransitionRecorder:
    """Append every vector-env step to an HDF5 file: ``(T, num_envs, ...)`` datasets.

    Keys: ``observations``, ``next_observations`` (float64, the env's own values; at an episode
    end ``next_observations`` is the final observation, not the reset one), ``actions`` (the env's
    action), ``rewards``, ``terminations``, ``truncations``. Read back by
    ``cdp_jax.data.builders.locomotion``.
    """

    def __init__(self, path: Path, num_envs: int, obs_dim: int, action_dim: int, block: int = 1000,
                 append: bool = False):
        import h5py

        self.file = h5py.File(path, "a" if append else "w")
        shapes = {"observations": (obs_dim,), "next_observations": (obs_dim,),
                  "actions": (action_dim,), "rewards": (), "terminations": (), "truncations": ()}
        self.keys = tuple(shapes)
        for k, shape in shapes.items():
            if append:
                continue
            dtype = bool if k in ("terminations", "truncations") else np.float64
            self.file.create_dataset(k, (0, num_envs, *shape), maxshape=(None, num_envs, *shape),
                                     dtype=dtype, chunks=(block, num_envs, *shape))
        self.pending: dict[str, list] = {k: [] for k in self.keys}
        self.block = block

    def add(self, **arrays) -> None:
        for k in self.keys:
            self.pending[k].append(np.asarray(arrays[k]))
        if len(self.pending["rewards"]) >= self.block:
            self.flush()

    def flush(self) -> None:
        if not self.pending["rewards"]:
            return
        for k in self.keys:
            data, dset = np.stack(self.pending[k]), self.file[k]
            dset.resize(dset.shape[0] + data.shape[0], axis=0)
            dset[-data.shape[0]:] = data
            self.pending[k] = []
        self.file.flush()

    def close(self) -> None:
        self.flush()
        self.file.close()


def train(env_id: str, config: SACConfig, num_steps: int, seed: int = 0, *,
          out_dir: str | Path | None = None, eval_every: int = 10_000, eval_episodes: int = 10,
          record_transitions: bool = False, env_kwargs: dict | None = None,
          progress: Callable[[int], None] | None = None,
          log: Callable[[dict], None] | None = None,
          resume: bool = False) -> tuple[SACState, list[dict]]:
    """Train SAC online for ``num_steps`` environment steps; return ``(state, evaluations)``.

    ``config.num_envs`` envs step together (:func:`vector_env_step`), their actions from one
    jitted :func:`explore` call per vector step; every ``config.train_every`` vector steps, after
    ``learning_starts`` env steps of uniform random actions, :func:`updates_per_call` (``num_envs *
    train_every * updates_per_step``) gradient steps run in one jitted :func:`update_many` on
    batches drawn uniformly from the replay buffer. Every ``eval_every`` env steps (and at the end)
    the deterministic policy is evaluated on ``eval_episodes`` episodes.

    With ``out_dir``: ``config.json``; ``snapshots/step_<env steps>/`` (orbax, the actor params and
    ``eval_return`` in ``meta.json``) at each evaluation; ``evaluations.json``; ``state/`` (the
    full last agent state); and with ``record_transitions`` every transition in
    ``transitions.h5`` (:class:`TransitionRecorder`), in collection order.

    ``resume=True`` continues a run in ``out_dir`` (same env and config; ``record_transitions``
    needed) from its last ``state/`` checkpoint up to ``num_steps``: the record is cut back to that
    step and the episodes running there are marked truncated, the replay buffer is refilled from
    the record, envs restart from fresh resets, and the randomness is re-derived from
    ``(seed, step)`` (:func:`run_rng`): deterministic, but not the same numbers as an
    uninterrupted run. ``config.json`` lists the resume steps (``resumed_at``), so the record can
    be replayed from its actions (:func:`cdp_jax.data.builders.locomotion.replay_record`).
    """
    from cdp_jax import checkpoint

    config.validate()
    for name, value in (("num_steps", num_steps), ("eval_every", eval_every),
                        ("eval_episodes", eval_episodes)):
        check_positive(name, value)
    envs = make_envs(env_id, config.num_envs, env_kwargs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(envs.single_action_space.shape))
    scale = action_scaler(envs.single_action_space)
    rng = run_rng(seed)
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    state = init(init_key, config, obs_dim, action_dim)
    out = Path(out_dir) if out_dir is not None else None
    recorder, steps, evaluations = None, 0, []
    if resume:
        if out is None or not record_transitions:
            raise ValueError("resume=True needs out_dir and record_transitions=True.")
        state, steps, evaluations = _resume(out, env_id, config, state, checkpoint)
        saved = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps(
            {**saved, "num_steps": num_steps, "resumed_at": [*saved.get("resumed_at", []), steps]},
            indent=2))
        rng = run_rng(seed, steps)
        key = jax.random.fold_in(key, steps)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {"env_id": env_id, "seed": seed, "num_steps": num_steps, "eval_every": eval_every,
             "eval_episodes": eval_episodes, "env_kwargs": env_kwargs or {},
             "dims": {"obs_dim": obs_dim, "action_dim": action_dim},
             "sac": config_to_dict(config)}, indent=2))
    if out is not None and record_transitions:
        recorder = TransitionRecorder(out / "transitions.h5", config.num_envs, obs_dim,
                                      action_dim, append=resume)

    capacity = min(config.buffer_size, num_steps)
    buffer = {"observations": np.zeros((capacity, obs_dim), np.float32),
              "actions": np.zeros((capacity, action_dim), np.float32),
              "rewards": np.zeros((capacity,), np.float32),
              "next_observations": np.zeros((capacity, obs_dim), np.float32),
              "terminals": np.zeros((capacity,), np.float32)}
    size = cursor = 0
    if resume:
        size = _refill(buffer, out / "transitions.h5", envs.single_action_space)
        cursor = size % capacity
    num_updates = updates_per_call(config)
    obs, _ = envs.reset(seed=[int(s) for s in rng.integers(2**31, size=config.num_envs)])
    vector_steps, next_eval = steps // config.num_envs, steps + eval_every
    if progress is not None and steps:
        progress(steps)  # a resumed run's bar starts where the run stands
    # Wall time in the record counts from the run's start, across resumes.
    start = time.perf_counter() - (evaluations[-1]["seconds"] if evaluations else 0.0)
    try:
        while steps < num_steps:
            if steps < config.learning_starts:
                policy_action = rng.uniform(-1.0, 1.0, (config.num_envs, action_dim))
            else:
                policy_action, key = explore_jit(state.actor_params, obs.astype(np.float32),
                                                  key, config=config, action_dim=action_dim)
                policy_action = np.asarray(policy_action)
            obs, transition = vector_env_step(envs, obs, scale(policy_action))
            if recorder is not None:
                recorder.add(**transition)
            cursor = replay_insert(buffer, cursor, transition, policy_action)
            size = min(size + config.num_envs, capacity)
            steps += config.num_envs
            vector_steps += 1
            if progress is not None:
                progress(config.num_envs)
            if steps > config.learning_starts and vector_steps % config.train_every == 0:
                idx = rng.integers(size, size=(num_updates, config.batch_size))
                batches = {k: v[idx] for k, v in buffer.items()}
                key, k = jax.random.split(key)
                state, metrics = update_many_jit(state, batches, k)
                last_metrics = {n: float(np.mean(v)) for n, v in jax.device_get(metrics).items()}
                if not all(np.isfinite(v) for v in last_metrics.values()):
                    raise FloatingPointError(f"non-finite SAC metrics at env step {steps}: "
                                             f"{last_metrics}")
            if steps >= next_eval or steps >= num_steps:
                next_eval += eval_every
                result = evaluate_policy(state, env_id, eval_episodes, seed + 10_000 + steps,
                                         env_kwargs=env_kwargs)
                record = {"env_steps": steps, "gradient_steps": int(state.step),
                          "return_mean": result["return_mean"], "return_std": result["return_std"],
                          "length_mean": result["length_mean"],
                          "seconds": time.perf_counter() - start}
                if steps >= config.learning_starts and int(state.step) > 0:
                    record.update({k: v for k, v in last_metrics.items()})
                evaluations.append(record)
                if log is not None:
                    log(record)
                if out is not None:
                    _save_snapshot(out, state, record, checkpoint)
    finally:
        envs.close()
        if recorder is not None:
            recorder.close()
    return state, evaluations


def _resume(out: Path, env_id: str, config: SACConfig, template: SACState, checkpoint):
    """Restore the last ``state/`` checkpoint of a run; cut its record and history back to it."""
    import h5py

    saved = json.loads((out / "config.json").read_text())
    if saved["env_id"] != env_id or saved["sac"] != json.loads(json.dumps(config_to_dict(config))):
        raise ValueError(f"cannot resume {out}: it was trained on {saved['env_id']} with "
                         f"{saved['sac']}, not {env_id} with {config_to_dict(config)}.")
    manager = checkpoint.CheckpointManager(out / "state", keep=1)
    step = manager.latest_step()
    if step is None:
        raise checkpoint.CheckpointError(f"no state checkpoint to resume from under {out}/state.")
    tree, _ = manager.restore({"state": template})
    for path in (out / "snapshots").glob("step_*"):
        if int(path.name.split("_")[1]) > step:  # saved after the state we resume from
            shutil.rmtree(path)
    evaluations = [e for e in json.loads((out / "evaluations.json").read_text())
                   if e["env_steps"] <= step]
    (out / "evaluations.json").write_text(json.dumps(evaluations, indent=2))
    with h5py.File(out / "transitions.h5", "a") as f:
        rows = step // config.num_envs
        for k in f:
            f[k].resize(rows, axis=0)
        # The episodes running at the checkpoint end there: the envs restart from fresh resets.
        f["truncations"][rows - 1] = ~f["terminations"][rows - 1]
    return tree["state"], step, evaluations


def _refill(buffer: dict, path: Path, action_space) -> int:
    """Fill ``buffer`` with the last transitions of the record; return how many."""
    import h5py

    capacity = buffer["rewards"].shape[0]
    low, high = np.asarray(action_space.low), np.asarray(action_space.high)
    with h5py.File(path, "r") as f:
        num_envs = f["rewards"].shape[1]
        first = max(0, f["rewards"].shape[0] - capacity // num_envs)
        flat = {k: f[k][first:].reshape(-1, *f[k].shape[2:]) for k in f}
    n = flat["rewards"].shape[0]
    buffer["observations"][:n] = flat["observations"]
    buffer["next_observations"][:n] = flat["next_observations"]
    buffer["actions"][:n] = 2.0 * (flat["actions"] - low) / (high - low) - 1.0  # env -> [-1, 1]
    buffer["rewards"][:n] = flat["rewards"]
    buffer["terminals"][:n] = flat["terminations"]
    return n


def _save_snapshot(out: Path, state: SACState, record: dict, checkpoint) -> None:
    checkpoint.save(out / "snapshots", record["env_steps"], {"actor_params": state.actor_params},
                    {"eval": record})
    manager = checkpoint.CheckpointManager(out / "state", keep=1)
    manager.save(record["env_steps"], {"state": state}, {"eval": record})
    path = out / "evaluations.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(previous + [record], indent=2))


def load_actor(snapshot_dir: str | Path, step: int | None = None) -> tuple[SACState, dict]:
    """A state holding the actor saved by :func:`train` (``<out_dir>`` or a copy of it) at
    ``step`` (default: the latest snapshot); returns ``(state, meta)``. Only the actor is filled;
    use it with :func:`act`."""
    from cdp_jax import checkpoint

    out = Path(snapshot_dir)
    saved = json.loads((out / "config.json").read_text())
    config = config_from_dict(SACConfig, saved["sac"])
    meta_dims = saved.get("dims")
    if meta_dims is None:
        import gymnasium as gym

        env = gym.make(saved["env_id"], **saved.get("env_kwargs", {}))
        meta_dims = {"obs_dim": int(np.prod(env.observation_space.shape)),
                     "action_dim": int(np.prod(env.action_space.shape))}
        env.close()
    state = init(jax.random.PRNGKey(0), config, meta_dims["obs_dim"], meta_dims["action_dim"])
    tree, meta = checkpoint.restore(out / "snapshots", {"actor_params": state.actor_params}, step)
    return state.replace(actor_params=tree["actor_params"]), meta
