"""Soft Actor-Critic (Haarnoja et al. 2018, with learned temperature): the behaviour-policy trainer.

The online agent that makes the locomotion datasets (D4RL's recipe: SAC policies at "medium" and
"expert" level). Losses, for a batch of transitions ``(s, a, r, s', d)``:

    y        = r + gamma (1 - d) [min_i Q'_i(s', a') - alpha log pi(a' | s')],   a' ~ pi(. | s')
    L_critic = sum_i mean (Q_i(s, a) - y)^2
    L_actor  = mean [alpha log pi(a~ | s) - min_i Q_i(s, a~)],                    a~ ~ pi(. | s)
    L_alpha  = -mean [log alpha (log pi(a~ | s) + H_target)]                      (H_target = -dim A)

``pi`` is a tanh-squashed Gaussian on ``[-1, 1]^action_dim`` (the train loop rescales to the env's
action box); ``d`` is 1 only for true terminations (time-limit truncations bootstrap). Targets are
Polyak-averaged every step.

Conventions as the other agents: a frozen :class:`SACConfig` (defaults at the bottom), pure
:func:`init`, :func:`update` and :func:`act` over a :class:`SACState` pytree, and :func:`update_many`
running ``K`` updates in one ``lax.scan``. :func:`train` is the host loop: vectorised gymnasium envs
stepped by :func:`vector_env_step` with the actions of all envs from one jitted :func:`explore`
call, a numpy replay buffer, ``K`` jitted updates per call, evaluation, and orbax snapshots of the
actor (``cdp_jax.checkpoint``) plus an optional HDF5 record of every transition collected (for
D4RL's "medium-replay" recipe). Shapes: observations ``(B, obs_dim)``, actions ``(B, action_dim)``.

Cost (``benchmarks/sac_throughput.py``): one update is about 0.56 GFLOP (batch 256, 256-256 nets),
so on a CPU the update, not the loop, sets the rate at one update per env step; the knob that
trades learning per env step for speed is ``updates_per_step`` (the UTD ratio, may be < 1).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cdp_jax.agents.common import (
    check_positive,
    config_from_dict,
    config_to_dict,
    ema_update,
    make_optimizer,
)

_LOG2 = float(np.log(2.0))


class TanhGaussianActor(nn.Module):
    """``obs (B, obs_dim) -> (mean (B, A), log_std (B, A))`` of the pre-tanh Gaussian (ReLU MLP)."""

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = obs
        for width in self.hidden_dims:
            h = nn.relu(nn.Dense(width)(h))
        mean = nn.Dense(self.action_dim)(h)
        # Smooth squashing of log_std into [min, max] (no dead gradient as with clipping).
        raw = jnp.tanh(nn.Dense(self.action_dim)(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw + 1.0)
        return mean, log_std


class _QHead(nn.Module):
    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(1)(x)[:, 0]


class TwinQ(nn.Module):
    """Two independent ReLU MLP critics: ``(obs (B, O), action (B, A)) -> (2, B)``."""

    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        twin = nn.vmap(_QHead, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=None, out_axes=0, axis_size=2)
        return twin(tuple(self.hidden_dims))(jnp.concatenate([obs, action], axis=-1))


class SACState(struct.PyTreeNode):
    """The whole agent state. ``config`` and the dimensions are static (not pytree leaves)."""

    actor_params: dict
    critic_params: dict
    target_critic_params: dict
    log_alpha: jax.Array  # float32 scalar: log of the entropy temperature
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    alpha_opt_state: optax.OptState
    step: jax.Array  # int32 scalar: gradient steps taken
    config: SACConfig = struct.field(pytree_node=False)
    obs_dim: int = struct.field(pytree_node=False)
    action_dim: int = struct.field(pytree_node=False)


def _actor(config: SACConfig, action_dim: int) -> TanhGaussianActor:
    return TanhGaussianActor(action_dim, tuple(config.hidden_dims), config.log_std_min,
                             config.log_std_max)


def _optimizers(config: SACConfig):
    return (make_optimizer(config.actor_lr, None, 0.0, None),
            make_optimizer(config.critic_lr, None, 0.0, None),
            make_optimizer(config.alpha_lr, None, 0.0, None))


def target_entropy(config: SACConfig, action_dim: int) -> float:
    return -float(action_dim) if config.target_entropy is None else config.target_entropy


def init(key: jax.Array, config: SACConfig, obs_dim: int, action_dim: int) -> SACState:
    """Fresh parameters, optimiser states, ``log_alpha = log(init_temperature)`` and step 0."""
    config.validate()
    key_actor, key_critic = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_params = _actor(config, action_dim).init(key_actor, obs)
    critic_params = TwinQ(tuple(config.hidden_dims)).init(key_critic, obs, act)
    log_alpha = jnp.asarray(np.log(config.init_temperature), jnp.float32)
    actor_opt, critic_opt, alpha_opt = _optimizers(config)
    return SACState(
        actor_params=actor_params, critic_params=critic_params,
        target_critic_params=critic_params, log_alpha=log_alpha,
        actor_opt_state=actor_opt.init(actor_params), critic_opt_state=critic_opt.init(critic_params),
        alpha_opt_state=alpha_opt.init(log_alpha), step=jnp.zeros((), jnp.int32), config=config,
        obs_dim=obs_dim, action_dim=action_dim)


def sample_action(config: SACConfig, actor_params, obs: jax.Array, key: jax.Array,
                  action_dim: int) -> tuple[jax.Array, jax.Array]:
    """``a = tanh(u)``, ``u ~ N(mean, std^2)``; returns ``(a (B, A), log pi(a | s) (B,))``.

    ``log pi(a) = log N(u) - sum_k log(1 - tanh(u_k)^2)``, with the stable form
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2 u))``.
    """
    mean, log_std = _actor(config, action_dim).apply(actor_params, obs)
    noise = jax.random.normal(key, mean.shape)
    u = mean + jnp.exp(log_std) * noise
    log_normal = -0.5 * jnp.square(noise) - log_std - 0.5 * np.log(2.0 * np.pi)
    log_det = 2.0 * (_LOG2 - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(log_normal - log_det, axis=-1)


def critic_loss(critic_params, state: SACState, batch: dict, key: jax.Array):
    """Soft TD regression of both critics. Returns ``(loss, metrics)``."""
    config, critic = state.config, TwinQ(tuple(state.config.hidden_dims))
    next_act, next_logp = sample_action(config, state.actor_params, batch["next_observations"],
                                        key, state.action_dim)
    next_q = critic.apply(state.target_critic_params, batch["next_observations"], next_act)
    alpha = jnp.exp(state.log_alpha)
    soft_v = next_q.min(axis=0) - alpha * next_logp
    target = batch["rewards"] + config.discount * (1.0 - batch["terminals"]) * soft_v
    target = jax.lax.stop_gradient(target)
    q = critic.apply(critic_params, batch["observations"], batch["actions"])  # (2, B)
    loss = jnp.mean(jnp.square(q - target[None, :])) * 2.0
    return loss, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/target_mean": target.mean()}


def actor_loss(actor_params, state: SACState, critic_params, batch: dict, key: jax.Array):
    """``mean(alpha log pi - min_i Q_i)``. Returns ``(loss, metrics)``; ``metrics["log_prob"]`` is
    used by the temperature loss."""
    config = state.config
    actions, logp = sample_action(config, actor_params, batch["observations"], key,
                                  state.action_dim)
    q = TwinQ(tuple(config.hidden_dims)).apply(critic_params, batch["observations"], actions)
    alpha = jnp.exp(state.log_alpha)
    loss = jnp.mean(alpha * logp - q.min(axis=0))
    return loss, {"actor/loss": loss, "actor/entropy": -logp.mean(), "log_prob": logp}


def temperature_loss(log_alpha, log_prob: jax.Array, entropy_target: float):
    """``-mean(log_alpha (log pi + H_target))`` with ``log pi`` held fixed."""
    loss = -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + entropy_target))
    return loss, {"alpha/loss": loss, "alpha/value": jnp.exp(log_alpha)}


def update(state: SACState, batch: dict, key: jax.Array) -> tuple[SACState, dict]:
    """One step on the critics, then the actor, then the temperature, then Polyak targets.

    ``batch``: ``observations (B, O)``, ``actions (B, A)`` in ``[-1, 1]``, ``rewards (B,)``,
    ``next_observations (B, O)``, ``terminals (B,)`` (1.0 where the MDP terminated).
    """
    config = state.config
    actor_opt, critic_opt, alpha_opt = _optimizers(config)
    key_critic, key_actor = jax.random.split(key)

    grads, critic_metrics = jax.grad(critic_loss, has_aux=True)(
        state.critic_params, state, batch, key_critic)
    updates, critic_opt_state = critic_opt.update(grads, state.critic_opt_state)
    critic_params = optax.apply_updates(state.critic_params, updates)

    grads, actor_metrics = jax.grad(actor_loss, has_aux=True)(
        state.actor_params, state, critic_params, batch, key_actor)
    updates, actor_opt_state = actor_opt.update(grads, state.actor_opt_state)
    actor_params = optax.apply_updates(state.actor_params, updates)

    log_prob = actor_metrics.pop("log_prob")
    entropy_target = target_entropy(config, state.action_dim)
    grad, alpha_metrics = jax.grad(temperature_loss, has_aux=True)(
        state.log_alpha, log_prob, entropy_target)
    updates, alpha_opt_state = alpha_opt.update(grad, state.alpha_opt_state)
    log_alpha = optax.apply_updates(state.log_alpha, updates)

    target = ema_update(state.target_critic_params, critic_params, 1.0 - config.tau)
    new_state = state.replace(
        actor_params=actor_params, critic_params=critic_params, target_critic_params=target,
        log_alpha=log_alpha, actor_opt_state=actor_opt_state, critic_opt_state=critic_opt_state,
        alpha_opt_state=alpha_opt_state, step=state.step + 1)
    return new_state, {**critic_metrics, **actor_metrics, **alpha_metrics}


def update_many(state: SACState, batches: dict, key: jax.Array) -> tuple[SACState, dict]:
    """``K`` updates in one ``lax.scan``; ``batches`` leaves are ``(K, B, ...)``; metrics ``(K,)``."""
    num = jax.tree.leaves(batches)[0].shape[0]

    def step(carry, inputs):
        batch, k = inputs
        return update(carry, batch, k)

    return jax.lax.scan(step, state, (batches, jax.random.split(key, num)))


def act(state: SACState, obs: jax.Array, key: jax.Array, deterministic: bool = False):
    """Actions ``(B, A)`` in ``[-1, 1]``: sampled, or ``tanh(mean)`` when ``deterministic``."""
    if deterministic:
        mean, _ = _actor(state.config, state.action_dim).apply(state.actor_params, obs)
        return jnp.tanh(mean)
    return sample_action(state.config, state.actor_params, obs, key, state.action_dim)[0]


def explore(actor_params, obs: jax.Array, key: jax.Array, *, config: SACConfig,
            action_dim: int) -> tuple[jax.Array, jax.Array]:
    """Sampled actions ``(num_envs, A)`` in ``[-1, 1]`` for all envs of a vector env, and the key
    for the next call: ``key, k = split(key)``, actions from ``k``, as :func:`act` with that ``k``.

    The collection loop's one call per vector step: the split happens inside it (no host-side key
    split per step), and it takes only the actor's parameters (a short pytree to hand over).
    """
    key, sample_key = jax.random.split(key)
    return sample_action(config, actor_params, obs, sample_key, action_dim)[0], key


# ----------------------------------------------------------------------------- online training

# Module-level jits: the config is static (in the state, or a static argument), so every train /
# evaluation call with the same config and shapes reuses one compilation.
_update_many_jit = jax.jit(update_many)
_act_jit = jax.jit(act, static_argnames="deterministic")
_explore_jit = jax.jit(explore, static_argnames=("config", "action_dim"))


def _make_envs(env_id: str, num_envs: int, env_kwargs: dict | None):
    import gymnasium as gym

    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **(env_kwargs or {}))] * num_envs,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def action_scaler(space) -> Callable[[np.ndarray], np.ndarray]:
    """Map ``[-1, 1]`` policy actions affinely onto the env's (finite) action box."""
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"SAC needs a bounded Box action space, got {space}.")
    return lambda a: low + 0.5 * (np.asarray(a, np.float64) + 1.0) * (high - low)


def vector_env_step(envs, obs: np.ndarray, env_action: np.ndarray) -> tuple[np.ndarray, dict]:
    """One step of a vector env in gymnasium's ``SAME_STEP`` autoreset mode (:func:`_make_envs`).

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
    policy = lambda obs, k: scale(_act_jit(state, jnp.asarray(obs, jnp.float32), k, deterministic))
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
    ``(seed, step)``: deterministic, but not the same numbers as an uninterrupted run.
    """
    from cdp_jax import checkpoint

    config.validate()
    for name, value in (("num_steps", num_steps), ("eval_every", eval_every),
                        ("eval_episodes", eval_episodes)):
        check_positive(name, value)
    envs = _make_envs(env_id, config.num_envs, env_kwargs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    action_dim = int(np.prod(envs.single_action_space.shape))
    scale = action_scaler(envs.single_action_space)
    rng = np.random.default_rng(seed)
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
        (out / "config.json").write_text(json.dumps({**saved, "num_steps": num_steps}, indent=2))
        rng = np.random.default_rng([seed, steps])
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
                policy_action, key = _explore_jit(state.actor_params, obs.astype(np.float32),
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
                state, metrics = _update_many_jit(state, batches, k)
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


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Hyperparameters (defaults: Haarnoja et al. 2018 as in CleanRL / jaxrl, for MuJoCo)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    init_temperature: float = 1.0
    target_entropy: float | None = None  # None: -action_dim
    batch_size: int = 256
    # host loop (train)
    num_envs: int = 1
    buffer_size: int = 1_000_000
    learning_starts: int = 5000  # env steps of uniform random actions before updates
    train_every: int = 50  # vector steps between jitted update calls (K = num_envs * this * utd)
    # Gradient steps per env step (the UTD ratio). Below 1 trades learning per env step for speed:
    # the update is the cost on a CPU (benchmarks/sac_throughput.py).
    updates_per_step: float = 1.0

    def validate(self) -> SACConfig:
        if not self.hidden_dims or any(int(w) <= 0 for w in self.hidden_dims):
            raise ValueError(f"Invalid hidden_dims={self.hidden_dims!r}; positive widths expected.")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_temperature", "batch_size",
                     "num_envs", "buffer_size", "train_every", "updates_per_step"):
            check_positive(name, getattr(self, name))
        for name in ("tau", "discount", "learning_starts"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not (self.discount <= 1.0 and self.tau <= 1.0):
            raise ValueError(f"discount and tau must lie in [0, 1], got {self.discount}, "
                             f"{self.tau}.")
        per_call = self.num_envs * self.train_every * self.updates_per_step
        if abs(per_call - round(per_call)) > 1e-9:
            raise ValueError(f"num_envs * train_every * updates_per_step = {self.num_envs} * "
                             f"{self.train_every} * {self.updates_per_step} = {per_call} must be a "
                             "whole number of updates per jitted call.")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min={self.log_std_min} must be < log_std_max="
                             f"{self.log_std_max}.")
        return self


def updates_per_call(config: SACConfig) -> int:
    """Gradient steps per jitted :func:`update_many` call in :func:`train`: ``num_envs *
    train_every * updates_per_step`` (a whole number, checked by :meth:`SACConfig.validate`)."""
    return int(round(config.num_envs * config.train_every * config.updates_per_step))


def default_config(**overrides) -> SACConfig:
    """The default SAC setting with ``overrides``, validated."""
    return dataclasses.replace(SACConfig(), **overrides).validate()
