"""Training: ``K`` updates per jitted call (``lax.scan`` over batches drawn on device) and the
host loop between calls (logging, evaluation, checkpoints).

:func:`make_train_chunk` is the device part: ``(state, arrays, key) -> (state, metrics)`` where
``metrics`` holds each of the ``K`` steps' values, ``(K,)`` per name; ``jax.vmap`` over it (with
:func:`init_seeds`) trains several seeds in one program. :func:`train` is the whole run described
by a :class:`TrainConfig` and an agent config; it writes ``runs/<name>/`` (``config.json``,
tensorboard events, ``metrics.csv``, ``checkpoints/``, ``eval.json``) and resumes exactly: the
PRNG key is part of the checkpoint and evaluation draws from its own key, so ``N`` steps +
restore + ``N`` steps gives bitwise the parameters and metrics of ``2N`` straight steps.

:func:`cdp_jax.multi_seed.train_seeds` trains several seeds as one vmapped program
(:func:`make_seeds_chunk`) and writes ``runs/<name>/seed_<k>/`` as :func:`train` would for each; both
take a ``parallel_mode`` (:mod:`cdp_jax.parallel`: batches or seeds split over a device mesh, across
hosts too).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import checkpoint, evaluation, parallel
from cdp_jax import logging as run_logging
from cdp_jax.agents import CONFIGS, DATA, get_agent
from cdp_jax.agents.common import config_from_dict, config_to_dict
from cdp_jax.data import buffer, minari
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data.normalization import Normalizer


class TrainingDivergedError(FloatingPointError):
    """A loss or metric became NaN / inf; the message names the step and the last checkpoint."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about a run except the agent's hyperparameters."""

    name: str = "quickstart"
    agent: str = "dql"
    dataset: str = "cdp/pointmaze/umaze-v0"
    fraction: float | None = None  # keep this fraction of the episodes (low-data regime)
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
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    run_dir: str | None = None  # default runs/<name>
    resume: bool = False
    progress: bool = True

    def validate(self) -> TrainConfig:
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
        return self

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

    ``"transitions"`` agents get ``observations, actions, rewards, next_observations, terminals``;
    ``"windows"`` agents get ``observations (N, H, D)`` and ``actions (N, A, act_dim)``. Raises
    ``DatasetValueError`` (a ValueError) on NaN / inf or on an action with ``|a| > 1``.
    """
    dataset_lib.check_values(data, action_bound=1.0)  # finite arrays, |a| <= 1, even with a NaN
    if norm is None:
        norm = (Normalizer.fit(data.observations) if config.normalize_obs
                else Normalizer.identity(data.obs_dim))
    normalize = lambda x: np.asarray(norm.normalize(x), np.float32)
    if DATA[agent_name] == "windows":
        win = dataset_lib.windows(data, agent_config.obs_horizon, agent_config.action_horizon)
        return {"observations": normalize(win["observations"]),
                "actions": np.clip(win["actions"], -1.0, 1.0)}, norm
    return {
        "observations": normalize(data.observations),
        "actions": np.clip(data.actions, -1.0, 1.0),
        "rewards": data.rewards * config.reward_scale + config.reward_bias,
        "next_observations": normalize(data.next_observations),
        "terminals": data.terminals,
    }, norm


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
        n_action=agent_config.n_action if windows else 1, seed=config.seed * 100_000)
    if data.ref_min_score is not None and data.ref_max_score is not None:
        scores = minari.normalized_score(data, result["returns"])
        result["normalized_scores"] = scores.tolist()
        result["normalized_score"] = float(scores.mean())
        result["normalized_score_std"] = float(scores.std())
    return result


# ----------------------------------------------------------------------------- host loop


def resolve_agent_config(config: TrainConfig, agent_config):
    """Fill run-dependent defaults: the cosine learning-rate decay spans the whole run."""
    if agent_config.lr_decay_steps is None:
        agent_config = dataclasses.replace(agent_config, lr_decay_steps=config.steps)
    return agent_config.validate()


def config_dict(config: TrainConfig, agent_config) -> dict:
    return {"train": dataclasses.asdict(config), "agent": config_to_dict(agent_config)}


def load_run_config(run_dir) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` from ``run_dir/config.json``."""
    data = json.loads((Path(run_dir) / "config.json").read_text())
    config = config_from_dict(TrainConfig, data["train"])
    return config, config_from_dict(CONFIGS[config.agent], data["agent"])


def train(config: TrainConfig, agent_config, parallel_mode: str = "none") -> dict:
    """Train (or resume) a run; returns a summary (run dir, steps, wall time, evaluations).

    ``parallel_mode="data"`` replicates the state and the dataset over all devices (all hosts
    after ``jax.distributed.initialize``) and splits every batch across them; the result equals
    the single-device run up to float reassociation. Only process 0 writes checkpoints.
    """
    start_time = time.perf_counter()
    config.validate()
    if parallel_mode == "seeds":
        raise ValueError("parallel_mode='seeds' splits a batch of seeds: use "
                         "cdp_jax.multi_seed.train_seeds.")
    mesh = parallel.make_mesh(parallel_mode)
    parallel.check_divisible(mesh, config.batch_size, "batch_size")
    agent_config = resolve_agent_config(config, agent_config)
    agent = get_agent(config.agent)
    run_dir = config.path
    ckpt = checkpoint.CheckpointManager(run_dir / "checkpoints", keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None and not config.resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume to continue "
                              "that run or choose another --name / --run-dir.")
    if config.resume and (run_dir / "config.json").exists():
        _, saved_agent = load_run_config(run_dir)
        if saved_agent != agent_config:
            raise ValueError(f"--resume with a different agent config than {run_dir}/config.json.")

    data = minari.load(config.dataset, fraction=config.fraction, num_episodes=config.num_episodes,
                       seed=config.seed)
    arrays, norm = prepare_arrays(data, config.agent, agent_config, config)
    envs = make_eval_envs(data, config)  # fails on a dimension mismatch before any compilation
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_dict(config, agent_config), indent=2))

    key_init, key_train = jax.random.split(jax.random.PRNGKey(config.seed))
    state = agent.init(key_init, agent_config, data.obs_dim, data.act_dim)
    history, step = [], 0
    if config.resume and ckpt.latest_step() is not None:
        tree, meta = ckpt.restore({"state": state, "rng": key_train})
        state, key_train, step = tree["state"], tree["rng"], int(meta["step"])
        history = meta["eval_history"]
        norm = Normalizer.from_dict(meta["normalizer"])
        arrays, _ = prepare_arrays(data, config.agent, agent_config, config, norm)
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
    logger = run_logging.RunLogger(log_dir, config.steps, step, config.progress)
    chunks, act_fn = {}, jax.jit(agent.act)
    protocol = eval_protocol(config.agent, agent_config, config)
    meta = {"config": config_dict(config, agent_config), "normalizer": norm.to_dict(),
            "dataset": {"id": data.dataset_id, "obs_keys": list(data.obs_keys),
                        "obs_dim": data.obs_dim, "action_dim": data.act_dim}}
    try:
        while step < config.steps:
            k = min(config.updates_per_call, config.steps - step)
            if k not in chunks:
                chunks[k] = jax.jit(make_train_chunk(agent, k, config.batch_size, batch_sharding),
                                    **jit_kwargs)
            key_train, key_chunk = jax.random.split(key_train)
            new_state, metrics = chunks[k](state, arrays, key_chunk)
            metrics = parallel.to_host(metrics)
            _check_finite(metrics, step, ckpt)
            state, step = new_state, step + k
            logger.log_train(step, {name: np.mean(v) for name, v in metrics.items()})
            last = step == config.steps
            score = None
            if (config.eval_every and step % config.eval_every == 0) or last:
                result = run_evaluation(act_fn, config.agent, state, data, norm, envs, config,
                                        step)
                entry = record.add(step, result, protocol)
                logger.log_eval(step, entry)
                score = entry.get("normalized_score", entry["return_mean"])
                logger.write(f"step {step}: normalized score {score:.1f}, success rate "
                             f"{entry['success_rate']:.2f}")
            if ((config.checkpoint_every and step % config.checkpoint_every == 0) or last) \
                    and jax.process_index() == 0:
                ckpt.save(step, parallel.to_host({"state": state, "rng": key_train}),
                          {**meta, "eval_history": record.history}, score=score)
            logger.reset_timer()
    finally:
        logger.close()
        envs.close()
    return {"run_dir": str(run_dir), "steps": step, "wall_time_s": time.perf_counter() - start_time,
            "eval": record.summary(), "checkpoints": str(ckpt.directory)}


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
            last = ckpt.latest_step()
            where = f"{ckpt.directory}/step_{last:09d}" if last is not None else "none written"
            raise TrainingDivergedError(
                f"non-finite {name} at gradient step {at}; training stopped. Last good "
                f"checkpoint: {where} (kept unchanged).")


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
    if step == "best":
        best = ckpt.best
        step = best["step"] if best else None
    latest = ckpt.latest_step()
    if latest is None:
        raise checkpoint.CheckpointError(f"no checkpoint under {ckpt.directory}.")
    meta = json.loads((checkpoint.step_dir(ckpt.directory, step or latest) / "meta.json")
                      .read_text())
    dims = meta["dataset"]
    template = {"state": agent.init(jax.random.PRNGKey(0), agent_config, dims["obs_dim"],
                                    dims["action_dim"]), "rng": jax.random.PRNGKey(0)}
    tree, meta = ckpt.restore(template, step)
    return config, agent_config, tree["state"], Normalizer.from_dict(meta["normalizer"]), meta


# Presets: TrainConfig and per-agent overrides. "quickstart" is the README's main command (a few
# minutes on 2 CPU cores, contraction weight 0.1); "full" is the paper-scale protocol (250k steps,
# evaluation every 20k steps on 50 episodes with 100 critic-resampled candidates at noise 0.5).
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
}


def preset(preset_name: str, agent: str = "dql", **train_overrides) -> tuple[TrainConfig, object]:
    """``(TrainConfig, agent config)`` of a named preset (see :data:`PRESETS`), validated.

    ``train_overrides`` replace TrainConfig fields (``name`` defaults to the preset's name).
    """
    if preset_name not in PRESETS:
        raise ValueError(f"Unknown preset {preset_name!r}; expected one of {sorted(PRESETS)}.")
    if agent not in CONFIGS:
        raise ValueError(f"Invalid agent={agent!r}; expected one of {sorted(CONFIGS)}.")
    spec = PRESETS[preset_name]
    config = TrainConfig(**{"name": preset_name, "agent": agent, **spec["train"],
                            **train_overrides})
    overrides = dict(spec[agent])
    agent_config = CONFIGS[agent]()
    weight = overrides.pop("contraction_weight", None)
    if weight is not None:
        overrides["contraction"] = dataclasses.replace(agent_config.contraction, weight=weight)
    return config.validate(), dataclasses.replace(agent_config, **overrides).validate()
