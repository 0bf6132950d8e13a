"""Training: ``K`` updates per jitted call (``lax.scan`` over batches drawn on device) and the
host loop between calls (logging, evaluation, checkpoints).

:func:`make_train_chunk` is the device part: ``(state, arrays, key) -> (state, metrics)`` where
``metrics`` holds each of the ``K`` steps' values, ``(K,)`` per name; ``jax.vmap`` over it (with
:func:`init_seeds`) trains several seeds in one program. :func:`train` is the whole run described
by a :class:`TrainConfig` and an agent config; it writes ``runs/<name>/`` (``config.json``,
tensorboard events, ``metrics.csv``, ``checkpoints/``, ``eval.json``) and resumes exactly: the
PRNG key is part of the checkpoint and evaluation draws from its own key, so ``N`` steps +
restore + ``N`` steps gives bitwise the parameters and metrics of ``2N`` straight steps.

A run directory belongs to one process at a time (:func:`cdp_jax.run_directory.own`). A resumed
run keeps its saved configuration: only the fields in :data:`RESUME_MAY_CHANGE` may differ
(:func:`resume_configs` builds the configs of a resume from ``config.json`` plus overrides;
:func:`check_resume` refuses a mismatch naming every field). Before compiling, :func:`train`
checks that the batches of one call and the dataset fit in device memory; a checkpoint is written
only if every parameter and optimiser-state value is finite.

:func:`cdp_jax.multi_seed.train_seeds` trains several seeds as one vmapped program
(:func:`make_seeds_chunk`) and writes ``runs/<name>/seed_<k>/`` as :func:`train` would for each; both
take a ``parallel_mode`` (:mod:`cdp_jax.parallel`: batches or seeds split over a device mesh, across
hosts too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import checkpoint, evaluation, paper, parallel, run_directory
from cdp_jax import logging as run_logging
from cdp_jax.agents import CONFIGS, DATA, get_agent
from cdp_jax.agents.common import (
    apply_overrides,
    check_finite_fields,
    config_from_dict,
    config_to_dict,
)
from cdp_jax.data import buffer, minari, protocol
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data.normalization import Normalizer


class TrainingDivergedError(FloatingPointError):
    """A loss, metric or parameter became NaN / inf; the message names the step and the last
    checkpoint."""


# TrainConfig fields a resumed run may change (e.g. train longer, evaluate or checkpoint at another
# cadence); every other field, and the whole agent config, must equal the saved run's. The identity
# fields say which run and how to continue it, and are never compared.
RESUME_MAY_CHANGE = ("steps", "eval_every", "checkpoint_every", "keep_checkpoints", "progress",
                     "eval_vector")
RUN_IDENTITY = ("name", "run_dir", "resume", "resume_from")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a run except the agent's hyperparameters.

    ``resume`` continues the run in :attr:`path` from its latest checkpoint (``resume_from``: from
    that step; later checkpoints are moved to ``checkpoints/discarded/``). A resumed run must
    match its saved ``config.json`` except in :data:`RESUME_MAY_CHANGE`.
    """

    name: str = "quickstart"
    agent: str = "dql"
    dataset: str = "cdp/pointmaze/umaze-v0"
    fraction: float | None = None  # keep this fraction of the data (low-data regime)
    fraction_unit: str = "episodes"  # whole episodes, or "transitions" (rows; official RL)
    num_episodes: int | None = None
    seed: int = 0
    steps: int = 3000
    batch_size: int = 256
    updates_per_call: int = 250  # K: gradient steps per jitted call
    eval_every: int = 1000
    eval_episodes: int = 10
    eval_envs: int = 10
    eval_vector: str = "sync"
    running_average: int = 3
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    normalize_obs: bool = True
    reward_normalization: str = "none"  # data.protocol.REWARD_NORMALIZATIONS, before scale/bias
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    max_episode_steps: int | None = None  # evaluation cap on top of the env's own time limit
    run_dir: str | None = None  # default runs/<name>
    resume: bool = False
    resume_from: int | None = None  # with resume: this checkpoint step instead of the latest
    progress: bool = True

    def validate(self) -> TrainConfig:
        check_finite_fields(self)
        if not self.name.strip() or self.name in (".", "..") or any(
                sep and sep in self.name for sep in (os.sep, os.altsep, "/")):
            raise ValueError(f"Invalid name={self.name!r}; must be a plain directory name under "
                             "runs/ (no path separator, not empty); use run_dir (--run-dir) for "
                             "a path.")
        if self.resume_from is not None and (self.resume_from < 0 or not self.resume):
            raise ValueError(f"Invalid resume_from={self.resume_from!r}; must be a checkpoint "
                             "step >= 0, with resume=True.")
        if self.agent not in CONFIGS:
            raise ValueError(f"Invalid agent={self.agent!r}; expected one of {sorted(CONFIGS)}.")
        for field in ("steps", "batch_size", "updates_per_call", "eval_episodes", "eval_envs",
                      "running_average", "keep_checkpoints"):
            if getattr(self, field) < 1:
                raise ValueError(f"Invalid {field}={getattr(self, field)!r}; must be >= 1.")
        for field in ("eval_every", "checkpoint_every"):
            value = getattr(self, field)
            if value < 0 or value % self.updates_per_call:
                raise ValueError(f"Invalid {field}={value}; must be >= 0 (0: only at the end) and "
                                 f"a multiple of updates_per_call={self.updates_per_call}.")
        if self.eval_vector not in evaluation.VECTOR_MODES:
            raise ValueError(f"Invalid eval_vector={self.eval_vector!r}; expected one of "
                             f"{evaluation.VECTOR_MODES}.")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"Invalid fraction={self.fraction}; must be in (0, 1].")
        if self.fraction_unit not in protocol.FRACTION_UNITS:
            raise ValueError(f"Invalid fraction_unit={self.fraction_unit!r}; expected one of "
                             f"{protocol.FRACTION_UNITS}.")
        if self.reward_normalization not in protocol.REWARD_NORMALIZATIONS:
            raise ValueError(f"Invalid reward_normalization={self.reward_normalization!r}; "
                             f"expected one of {protocol.REWARD_NORMALIZATIONS}.")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"Invalid max_episode_steps={self.max_episode_steps}; must be >= 1.")
        return self

    @property
    def episode_fraction(self) -> float | None:
        """The fraction the episode loader keeps (``None`` when the fraction is by transitions)."""
        return self.fraction if self.fraction_unit == "episodes" else None

    @property
    def path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# ----------------------------------------------------------------------------- device part


def make_train_chunk(agent, num_updates: int, batch_size: int, batch_sharding=None):
    """``(state, arrays, key[, num_rows]) -> (state, metrics)``: ``num_updates`` updates in one
    ``lax.scan``.

    Batches are drawn on device from ``arrays`` (rows ``(N, ...)``) as ``(K, B, ...)``, uniformly
    among the first ``num_rows`` rows (default ``N``; a traced count lets seeds with datasets of
    different sizes share one padded, static shape); ``metrics`` is a dict of ``(K,)`` arrays.
    ``batch_sharding`` (e.g. :func:`cdp_jax.parallel.batch_axis`) splits the batches over a mesh
    (data parallelism). Not jitted here: wrap in ``jax.jit`` (and ``jax.vmap`` with
    ``in_axes=(0, None, 0)`` to train a batch of seeds, or see :func:`make_seeds_chunk`).
    """

    def train_chunk(state, arrays, key, num_rows=None):
        key_batches, key_updates = jax.random.split(key)
        num_rows = buffer.num_rows(arrays) if num_rows is None else num_rows
        idx = jax.random.randint(key_batches, (num_updates, batch_size), 0, num_rows)
        batches = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), arrays)
        batches = parallel.constrain(batches, batch_sharding)
        keys = jax.random.split(key_updates, num_updates)

        def step(state, inputs):
            batch, step_key = inputs
            state, metrics = agent.update(state, batch, step_key)
            return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

        return jax.lax.scan(step, state, (batches, keys))

    return train_chunk


def make_seeds_chunk(agent, num_updates: int, batch_size: int, per_seed_data: bool,
                     batch_sharding=None):
    """``(states, arrays, num_rows, keys) -> (states, keys, metrics)`` for a batch of seeds.

    ``vmap`` of :func:`make_train_chunk` over the seed axis of the states and of the training
    keys ``(S, 2)``; each seed splits its key exactly as :func:`train` does on the host, so seed
    ``s`` draws the batches and noise of a single-seed run. With ``per_seed_data`` the arrays are
    ``(S, N_max, ...)`` with ``num_rows (S,)`` valid rows each; otherwise one ``(N, ...)`` set and
    a scalar ``num_rows`` are shared. ``metrics`` are ``(S, K)``. Not jitted here.
    """
    chunk = make_train_chunk(agent, num_updates, batch_size, batch_sharding)

    def one_seed(state, arrays, num_rows, key):
        key, key_chunk = jax.random.split(key)
        state, metrics = chunk(state, arrays, key_chunk, num_rows)
        return state, key, metrics

    data_axis = 0 if per_seed_data else None
    return jax.vmap(one_seed, in_axes=(0, data_axis, data_axis, 0))


def init_seeds(agent, keys: jax.Array, config, obs_dim: int, action_dim: int):
    """A batch of agent states, one per key (leading axis ``len(keys)``), for vmapped training."""
    return jax.vmap(lambda k: agent.init(k, config, obs_dim, action_dim))(keys)


# ----------------------------------------------------------------------------- data


def prepare_arrays(data: dataset_lib.OfflineDataset, agent_name: str, agent_config,
                   config: TrainConfig, norm: Normalizer | None = None) -> tuple[dict, Normalizer]:
    """Training arrays (numpy, normalised observations) and the observation normaliser.

    ``norm`` (e.g. restored from a checkpoint) is used as given; otherwise it is fitted to the
    observations (or the identity with ``config.normalize_obs=False``).

    ``"transitions"`` agents get ``observations, actions, rewards, next_observations, terminals``
    (rewards normalised by ``config.reward_normalization``, then ``* reward_scale + reward_bias``);
    ``"windows"`` agents get ``observations (N, H, D)`` and ``actions (N, A, act_dim)``. With
    ``fraction_unit="transitions"`` a random ``fraction`` of the rows is kept, after fitting the
    normaliser on all of them (as the official code does). Raises ``DatasetValueError`` (a
    ValueError) on NaN / inf or on an action with ``|a| > 1``.
    """
    dataset_lib.check_values(data, action_bound=1.0)  # finite arrays, |a| <= 1, even with a NaN
    if norm is None:
        norm = (Normalizer.fit(data.observations) if config.normalize_obs
                else Normalizer.identity(data.obs_dim))
    normalize = lambda x: np.asarray(norm.normalize(x), np.float32)
    if DATA[agent_name] == "windows":
        win = dataset_lib.windows(data, agent_config.obs_horizon, agent_config.action_horizon)
        arrays = {"observations": normalize(win["observations"]),
                  "actions": np.clip(win["actions"], -1.0, 1.0)}
    else:
        rewards = protocol.normalize_rewards(data, config.reward_normalization)
        arrays = {
            "observations": normalize(data.observations),
            "actions": np.clip(data.actions, -1.0, 1.0),
            "rewards": rewards * config.reward_scale + config.reward_bias,
            "next_observations": normalize(data.next_observations),
            "terminals": data.terminals,
        }
    if config.fraction is not None and config.fraction_unit == "transitions":
        arrays = protocol.keep_fraction_of_rows(arrays, config.fraction, config.seed)
    return arrays, norm


def make_eval_envs(data: dataset_lib.OfflineDataset, config: TrainConfig):
    """The dataset's evaluation env, ``eval_envs`` copies; checks its dimensions against data."""
    envs = evaluation.make_vector_env(lambda: data.make_env(eval_env=True), config.eval_envs,
                                      config.eval_vector)
    obs, _ = envs.reset(seed=0)
    obs_dim = dataset_lib.flatten_observation(obs, data.obs_keys).shape[-1]
    act_shape = envs.single_action_space.shape
    if obs_dim != data.obs_dim or act_shape != (data.act_dim,):
        envs.close()
        raise ValueError(f"dataset {data.dataset_id!r} (obs_dim={data.obs_dim}, action_dim="
                         f"{data.act_dim}) does not match its environment (obs_dim={obs_dim}, "
                         f"action shape {act_shape}).")
    return envs


def make_policy(act_fn, state):
    """The batched policy ``(obs, key) -> actions`` for :func:`evaluation.evaluate`.

    ``act_fn`` is ``jax.jit(agent.act)``, made once per run so that evaluations reuse its compiled
    program (the state is an argument, not a closed-over constant).
    """
    return lambda obs, key: act_fn(state, jnp.asarray(obs, jnp.float32), key)


def eval_protocol(agent_name: str, agent_config, config: TrainConfig) -> dict:
    """The protocol stored next to every score in ``eval.json``."""
    return {
        "episodes": config.eval_episodes, "num_envs": config.eval_envs,
        "candidates": getattr(agent_config, "num_candidates", 1),
        "candidate_temperature": getattr(agent_config, "candidate_temperature", None),
        "noise_temperature": agent_config.noise_temperature, "sampler": agent_config.sampler,
        "sampler_steps": agent_config.sampler_steps, "dataset": config.dataset,
        "max_episode_steps": config.max_episode_steps,
    }


def run_evaluation(act_fn, agent_name, state, data, norm, envs, config: TrainConfig, step: int):
    """One evaluation at ``step``: returns, success rate and normalised score (if defined)."""
    agent_config = state.config
    windows = DATA[agent_name] == "windows"
    obs_fn = lambda o: np.asarray(
        norm.normalize(dataset_lib.flatten_observation(o, data.obs_keys)), np.float32)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1_000_003), step)
    result = evaluation.evaluate(
        make_policy(act_fn, state), envs, key, num_episodes=config.eval_episodes,
        obs_fn=obs_fn, obs_horizon=agent_config.obs_horizon if windows else None,
        n_action=agent_config.n_action if windows else 1, seed=config.seed * 100_000,
        max_episode_steps=config.max_episode_steps)
    if data.ref_min_score is not None and data.ref_max_score is not None:
        scores = minari.normalized_score(data, result["returns"])
        result["normalized_scores"] = scores.tolist()
        result["normalized_score"] = float(scores.mean())
        result["normalized_score_std"] = float(scores.std())
    return result


# ----------------------------------------------------------------------------- host loop


def resolve_agent_config(config: TrainConfig, agent_config, saved_agent=None):
    """Fill run-dependent defaults: the cosine learning-rate decay spans the whole run (a resumed
    run keeps the span it was started with, ``saved_agent``'s, even if ``steps`` grows)."""
    if agent_config.lr_decay_steps is None:
        span = config.steps
        if saved_agent is not None and saved_agent.lr_decay_steps is not None:
            span = saved_agent.lr_decay_steps
        agent_config = dataclasses.replace(agent_config, lr_decay_steps=span)
    check_finite_fields(agent_config)
    return agent_config.validate()


def config_dict(config: TrainConfig, agent_config) -> dict:
    return {"train": dataclasses.asdict(config), "agent": config_to_dict(agent_config)}


def load_run_config(run_dir) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` from ``run_dir/config.json``.

    Raises:
      FileNotFoundError: ``run_dir`` holds no run (the message names the path).
      ValueError: ``config.json`` is unreadable.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else "holds no run (no config.json)"
        seeds = sorted(p.name for p in run_dir.glob("seed_*") if (p / "config.json").is_file())
        hint = f"; it holds the seeds {seeds} of a --seeds run" if seeds else ""
        raise FileNotFoundError(f"run directory {run_dir.absolute()} {what}{hint}.")
    try:
        data = json.loads(path.read_text())
        config = config_from_dict(TrainConfig, data["train"])
        return config, config_from_dict(CONFIGS[config.agent], data["agent"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path.absolute()} is unreadable ({type(err).__name__}: {err}).") from None


def resume_configs(run_dir, train_overrides: dict | None = None,
                   agent_overrides: list[str] | tuple = ()) -> tuple[TrainConfig, object]:
    """The configs that resume the run in ``run_dir``: its saved ``config.json`` with
    ``train_overrides`` (TrainConfig fields) and ``agent_overrides`` (``"field=value"``) applied.

    Only what is overridden can differ from the saved run; :func:`check_resume` (called by
    :func:`train`) refuses overrides outside :data:`RESUME_MAY_CHANGE`, naming them.
    """
    saved, saved_agent = load_run_config(run_dir)
    overrides = {"resume_from": None, **(train_overrides or {})}
    overrides.update(run_dir=str(run_dir), resume=True)
    config = dataclasses.replace(saved, **overrides)
    if config.agent != saved.agent:
        raise ValueError(f"--resume: {run_dir} is a run of agent={saved.agent!r}, not "
                         f"{config.agent!r}; start a new run (another --name / --run-dir).")
    return config.validate(), apply_overrides(saved_agent, agent_overrides).validate()


def check_resume(config: TrainConfig, agent_config):
    """For ``config.resume``: the run in ``config.path`` must exist and have been trained with the
    same configuration up to :data:`RESUME_MAY_CHANGE`. Returns the saved agent config.

    Raises:
      FileNotFoundError: no run there.
      ValueError: the configurations differ; the message names each field with both values.
    """
    saved, saved_agent = load_run_config(config.path)
    requested = resolve_agent_config(config, agent_config, saved_agent)
    changes = run_directory.config_changes(saved, config, ignore=RESUME_MAY_CHANGE + RUN_IDENTITY)
    if saved.agent == config.agent:
        changes += run_directory.config_changes(saved_agent, requested, prefix="agent.")
    if changes:
        raise ValueError(
            f"--resume: {config.path} was trained with another configuration: "
            f"{'; '.join(changes)}. Drop these settings to continue with the saved ones, or start "
            f"a new run (another --name / --run-dir); a resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE)}.")
    return saved_agent


def train(config: TrainConfig, agent_config, parallel_mode: str = "none") -> dict:
    """Train (or resume) a run; returns a summary (run dir, steps, wall time, evaluations).

    ``parallel_mode="data"`` replicates the state and the dataset over all devices (all hosts
    after ``jax.distributed.initialize``) and splits every batch across them; the result equals
    the single-device run up to float reassociation. Only process 0 writes checkpoints.

    Raises, before any compilation: ``ValueError`` for an invalid configuration or, on resume, one
    that differs from the saved run's; ``FileNotFoundError`` (resume: no run there) or
    ``FileExistsError`` (no resume: a run is there); :class:`cdp_jax.run_directory.RunLockedError`
    (another process owns the run directory); :class:`cdp_jax.parallel.DeviceMemoryError`;
    :class:`cdp_jax.checkpoint.CheckpointError`. While training: :class:`TrainingDivergedError`.
    """
    start_time = time.perf_counter()
    config.validate()
    if parallel_mode == "seeds":
        raise ValueError("parallel_mode='seeds' splits a batch of seeds: use "
                         "cdp_jax.multi_seed.train_seeds.")
    mesh = parallel.make_mesh(parallel_mode)
    parallel.check_divisible(mesh, config.batch_size, "batch_size")
    saved_agent = check_resume(config, agent_config) if config.resume else None
    agent_config = resolve_agent_config(config, agent_config, saved_agent)
    agent = get_agent(config.agent)
    run_dir = config.path
    ckpt = checkpoint.CheckpointManager(run_dir / "checkpoints", keep=config.keep_checkpoints)
    check_fresh_or_resume(config, ckpt)

    data = minari.load(config.dataset, fraction=config.episode_fraction,
                       num_episodes=config.num_episodes, seed=config.seed)
    arrays, norm = prepare_arrays(data, config.agent, agent_config, config)
    parallel.check_memory(arrays, config.updates_per_call, config.batch_size,
                          1 if mesh is None else mesh.size)
    envs = make_eval_envs(data, config)  # fails on a dimension mismatch before any compilation
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(envs.close)
        cleanup.enter_context(run_directory.own(process_dir(run_dir)))
        check_fresh_or_resume(config, ckpt)  # again, now that no other process can write
        key_init, key_train = jax.random.split(jax.random.PRNGKey(config.seed))
        state = agent.init(key_init, agent_config, data.obs_dim, data.act_dim)
        history, step = [], 0
        start = resume_step(config, ckpt)
        if start is not None:
            tree, meta = restore_for_resume(ckpt, {"state": state, "rng": key_train}, start)
            state, key_train, step = tree["state"], tree["rng"], int(meta["step"])
            history = meta["eval_history"]
            norm = Normalizer.from_dict(meta["normalizer"])
            arrays, _ = prepare_arrays(data, config.agent, agent_config, config, norm)
            if jax.process_index() == 0:  # the one process that writes checkpoints
                ckpt.discard_after(step)
        if jax.process_index() == 0:
            run_directory.write_json(run_dir / "config.json", config_dict(config, agent_config))
        jit_kwargs, batch_sharding = {}, None
        if mesh is None:
            arrays = buffer.to_device(arrays)
        else:  # placed once, replicated; the chunk splits each batch over the mesh
            arrays, state, key_train = parallel.put((arrays, state, key_train),
                                                    parallel.replicated(mesh))
            jit_kwargs = {"out_shardings": parallel.replicated(mesh)}
            batch_sharding = parallel.batch_axis(mesh)
        log_dir = process_dir(run_dir)
        record = evaluation.EvalRecord(log_dir / "eval.json", config.running_average, history)
        if start is not None:
            record.write()  # evaluations after the checkpoint belong to the abandoned attempt
        logger = cleanup.enter_context(contextlib.closing(run_logging.RunLogger(
            log_dir, config.steps, step, config.progress, resumed=config.resume)))
        if config.resume and start is None:
            logger.write(f"{run_dir}: no checkpoint yet; training from step 0.")
        if note := lr_schedule_note(config, agent_config):
            logger.write(note)
        chunks, act_fn = {}, jax.jit(agent.act)
        protocol = eval_protocol(config.agent, agent_config, config)
        meta = {"config": config_dict(config, agent_config), "normalizer": norm.to_dict(),
                "dataset": {"id": data.dataset_id, "obs_keys": list(data.obs_keys),
                            "obs_dim": data.obs_dim, "action_dim": data.act_dim}}
        while step < config.steps:
            k = min(config.updates_per_call, config.steps - step)
            if k not in chunks:
                chunks[k] = jax.jit(make_train_chunk(agent, k, config.batch_size, batch_sharding),
                                    **jit_kwargs)
            key_train, key_chunk = jax.random.split(key_train)
            try:
                new_state, metrics = chunks[k](state, arrays, key_chunk)
                metrics = parallel.to_host(metrics)
            except jax.errors.JaxRuntimeError as err:
                if (oom := parallel.out_of_memory(err, config.batch_size,
                                                config.updates_per_call)) is not None:
                    raise oom from None
                raise
            _check_finite(metrics, step, ckpt)
            state, step = new_state, step + k
            logger.log_train(step, {name: np.mean(v) for name, v in metrics.items()})
            last = step == config.steps
            due_eval = (config.eval_every and step % config.eval_every == 0) or last
            due_save = (((config.checkpoint_every and step % config.checkpoint_every == 0) or last)
                        and jax.process_index() == 0)
            if due_eval or due_save:  # never evaluate or save non-finite parameters
                check_state_finite(state, step, ckpt)
            score = None
            if due_eval:
                result = run_evaluation(act_fn, config.agent, state, data, norm, envs, config,
                                        step)
                entry = record.add(step, result, protocol)
                logger.log_eval(step, entry)
                score = entry.get("normalized_score", entry["return_mean"])
                logger.write(f"step {step}: normalized score {score:.1f}, success rate "
                             f"{entry['success_rate']:.2f}")
            if due_save:
                logger.flush()  # the events up to a checkpoint are on disk before it exists
                ckpt.save(step, parallel.to_host({"state": state, "rng": key_train}),
                          {**meta, "eval_history": record.history, "finite": True}, score=score)
            logger.reset_timer()
    return {"run_dir": str(run_dir), "steps": step, "wall_time_s": time.perf_counter() - start_time,
            "eval": record.summary(), "checkpoints": str(ckpt.directory)}


def resume_step(config: TrainConfig, ckpt: checkpoint.CheckpointManager) -> int | None:
    """The checkpoint step a run continues from: ``resume_from`` or the latest (``None``: a new
    run, or a resumed one that wrote no checkpoint yet). Refuses ``steps`` below it."""
    if not config.resume:
        return None
    start = config.resume_from if config.resume_from is not None else ckpt.latest_step()
    if start is not None and start > config.steps:
        raise ValueError(f"Invalid steps={config.steps}: the run resumes from its checkpoint at "
                         f"step {start}; pass --steps >= {start}.")
    return start


def lr_schedule_note(config: TrainConfig, agent_config) -> str | None:
    """A warning when a resumed run trains past the end of its learning-rate decay."""
    span = agent_config.lr_decay_steps
    if config.resume and span and config.steps > span:
        return (f"note: the cosine learning-rate decay of this run ends at step {span} (the run "
                f"as started); the steps after it train with a learning rate of 0.")
    return None


def check_fresh_or_resume(config: TrainConfig, ckpt: checkpoint.CheckpointManager) -> None:
    if ckpt.latest_step() is not None and not config.resume:
        raise FileExistsError(f"{config.path} already holds checkpoints; pass --resume to "
                              "continue that run or choose another --name / --run-dir.")


def restore_for_resume(ckpt: checkpoint.CheckpointManager, target, step: int):
    """:meth:`CheckpointManager.restore`, with how to go on from an earlier checkpoint."""
    try:
        return ckpt.restore(target, step)
    except checkpoint.CheckpointError as err:
        earlier = [s for s in checkpoint.list_steps(ckpt.directory) if s < step]
        if not earlier:
            raise
        raise checkpoint.CheckpointError(
            f"{err} To continue from an earlier one: --resume --resume-from {earlier[-1]} (the "
            f"later checkpoints are moved to {ckpt.directory}/discarded/).") from None


def process_dir(run_dir: Path) -> Path:
    """Where this process logs: ``run_dir`` on process 0, ``run_dir/process_<i>`` on the other
    hosts of a multi-host run (they compute the same numbers; no two write one file)."""
    index = jax.process_index()
    return run_dir if index == 0 else run_dir / f"process_{index}"


def _check_finite(metrics: dict, step: int, ckpt: checkpoint.CheckpointManager) -> None:
    for name, values in sorted(metrics.items()):
        bad = ~np.isfinite(np.asarray(values))
        if bad.any():
            at = step + int(np.argmax(bad)) + 1
            raise TrainingDivergedError(
                f"non-finite {name} at gradient step {at}; training stopped. "
                f"{_last_checkpoint(ckpt)}")


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_state_finite(state, step: int, ckpt: checkpoint.CheckpointManager) -> None:
    """Raise :class:`TrainingDivergedError` naming the leaves (parameters, EMA, targets,
    optimiser state) of ``state`` that hold NaN / inf after gradient step ``step``."""
    if bool(_all_finite(state)):
        return
    flat, _ = jax.tree_util.tree_flatten_with_path(parallel.to_host(state))
    bad = [jax.tree_util.keystr(path) for path, x in flat
           if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.isfinite(x).all()]
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise TrainingDivergedError(
        f"non-finite values in {shown} after gradient step {step}; training stopped, no "
        f"checkpoint written for it. {_last_checkpoint(ckpt)}")


def _last_checkpoint(ckpt: checkpoint.CheckpointManager) -> str:
    """The last checkpoint, called good only if its save checked the state finite."""
    last = ckpt.latest_step()
    if last is None:
        return "No checkpoint was written."
    where = checkpoint.step_dir(ckpt.directory, last)
    try:
        checked = checkpoint.read_meta(ckpt.directory, last).get("finite") is True
    except checkpoint.CheckpointError:
        checked = False
    if checked:
        return f"Last good checkpoint (finite when saved): {where} (kept unchanged)."
    return f"Last checkpoint: {where} (kept unchanged; not checked for finite values)."


def checkpoint_step(run_dir, step: int | str | None = None) -> int:
    """The step of ``run_dir``'s checkpoint ``step`` (a step, ``"best"``, ``None``: the latest);
    :class:`cdp_jax.checkpoint.CheckpointError` if there is no such checkpoint."""
    ckpt = checkpoint.CheckpointManager(Path(run_dir) / "checkpoints")
    steps = checkpoint.list_steps(ckpt.directory)
    if not steps:
        raise checkpoint.CheckpointError(f"no checkpoint under {ckpt.directory}.")
    if step == "best":
        if ckpt.best is None:
            raise checkpoint.CheckpointError(f"{ckpt.directory} has no best.json (no evaluated "
                                             f"checkpoint); checkpoints: {steps}.")
        step = ckpt.best["step"]
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise checkpoint.CheckpointError(f"no checkpoint for step {step} under {ckpt.directory}; "
                                         f"have {steps}.")
    return step


def load_policy(run_dir, step: int | str | None = None):
    """Restore a trained run for evaluation.

    Args:
      run_dir: the run directory (``runs/<name>``).
      step: a checkpoint step, ``"best"``, or ``None`` for the latest.

    Returns:
      ``(config, agent_config, state, normalizer, meta)``.
    """
    config, agent_config = load_run_config(run_dir)
    agent = get_agent(config.agent)
    ckpt = checkpoint.CheckpointManager(Path(run_dir) / "checkpoints")
    step = checkpoint_step(run_dir, step)
    meta = checkpoint.read_meta(ckpt.directory, step)
    dims = meta.get("dataset")
    if not isinstance(dims, dict) or not {"obs_dim", "action_dim"} <= set(dims):
        raise checkpoint.CheckpointError(
            f"checkpoint {checkpoint.step_dir(ckpt.directory, step)} is damaged: its meta.json "
            "lacks the dataset dimensions.")
    template = {"state": agent.init(jax.random.PRNGKey(0), agent_config, dims["obs_dim"],
                                    dims["action_dim"]), "rng": jax.random.PRNGKey(0)}
    tree, meta = ckpt.restore(template, step)
    return config, agent_config, tree["state"], Normalizer.from_dict(meta["normalizer"]), meta


# Presets: TrainConfig and per-agent overrides. "quickstart" is the README's main command (a few
# minutes on 2 CPU cores, contraction weight 0.1); "full" is a paper-scale protocol with cdp_jax's
# defaults (250k steps, evaluation every 20k steps on 50 episodes with 100 critic-resampled
# candidates at noise 0.5); "paper" and "paper-il" are the official pipeline (cdp_jax.paper), with
# per-task values from the dataset id.
PRESETS = {
    "quickstart": {
        "train": {"steps": 3000, "eval_every": 1000, "checkpoint_every": 1000},
        "dql": {"sampler_steps": 5, "ema_start": 200, "contraction_weight": 0.1},
        "dbc": {"hidden_dim": 256, "sampler_steps": 10, "action_horizon": 4, "n_action": 2,
                "contraction_weight": 0.1},
        "idql": {"sampler_steps": 5, "ema_start": 200, "num_candidates": 16,
                 "contraction_weight": 0.1},
    },
    "full": {
        "train": {"steps": 250_000, "eval_every": 20_000, "checkpoint_every": 20_000,
                  "updates_per_call": 1000, "eval_episodes": 50},
        "dql": {"num_candidates": 100, "noise_temperature": 0.5, "contraction_weight": 0.1},
        "dbc": {"contraction_weight": 0.1, "action_horizon": 1},
        "idql": {"num_candidates": 100, "noise_temperature": 0.5, "contraction_weight": 0.1},
    },
    "paper": {"train": paper.PAPER_RL_TRAIN, "dql": paper.PAPER_RL},
    "paper-il": {"train": paper.PAPER_IL_TRAIN, "dbc": paper.PAPER_IL},
}


def preset(preset_name: str, agent: str | None = None, agent_overrides=(),
           **train_overrides) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` of a named preset (see :data:`PRESETS`), validated.

    ``agent`` defaults to the preset's first agent (``dql``; ``dbc`` for ``paper-il``).
    ``agent_overrides`` are ``"field=value"`` assignments (as ``--set``) applied last;
    ``train_overrides`` replace TrainConfig fields (``name`` defaults to the preset's name).

    ``"paper"`` adds the per-task values of ``train_overrides["dataset"]`` (or the default
    dataset) from :func:`cdp_jax.paper.task_row`; a dataset with no row raises ``ValueError``
    listing the known ones unless ``agent_overrides`` set ``eta`` and ``candidate_temperature``.
    """
    if preset_name not in PRESETS:
        raise ValueError(f"Unknown preset {preset_name!r}; expected one of {sorted(PRESETS)}.")
    spec = PRESETS[preset_name]
    agents = [k for k in spec if k != "train"]
    agent = agent or agents[0]
    if agent not in CONFIGS:
        raise ValueError(f"Invalid agent={agent!r}; expected one of {sorted(CONFIGS)}.")
    if agent not in spec:
        raise ValueError(f"Preset {preset_name!r} is for agent(s) {agents}, not {agent!r}.")
    train_fields = {"name": preset_name, "agent": agent, **spec["train"]}
    overrides = dict(spec[agent])
    if preset_name == "paper":
        dataset = train_overrides.get("dataset", TrainConfig.dataset)
        found = paper.task_row(dataset)
        explicit = {a.split("=", 1)[0].strip() for a in agent_overrides}
        if found is None and not {"eta", "candidate_temperature"} <= explicit:
            raise ValueError(paper.unknown_dataset_message(dataset))
        if found is not None:
            task_agent, task_train = paper.rl_task_overrides(found[1])
            overrides.update(task_agent)
            train_fields.update(task_train)
    config = TrainConfig(**{**train_fields, **train_overrides})
    agent_config = CONFIGS[agent]()
    weight = overrides.pop("contraction_weight", None)
    if weight is not None:
        overrides["contraction"] = dataclasses.replace(agent_config.contraction, weight=weight)
    agent_config = dataclasses.replace(agent_config, **overrides)
    agent_config = apply_overrides(agent_config, agent_overrides)
    return config.validate(), agent_config.validate()
