"""Training: ``K`` updates per jitted call (``lax.scan`` over batches drawn on device) and the
host loop between calls (logging, evaluation, checkpoints).

:func:`make_train_chunk` is the device part: ``(state, arrays, key) -> (state, metrics)`` where
``metrics`` holds each of the ``K`` steps' values, ``(K,)`` per name; ``jax.vmap`` over it (with
:func:`init_seeds`) trains several seeds in one program. :func:`train` is the whole run described
by a :class:`cdp_jax.run_config.TrainConfig` and an agent config; it writes ``runs/<name>/``
(``config.json``, tensorboard events, ``metrics.csv``, ``checkpoints/``, ``eval.json``) and
resumes exactly: the PRNG key is part of the checkpoint and evaluation draws from its own key, so
``N`` steps + restore + ``N`` steps gives bitwise the parameters and metrics of ``2N`` straight
steps.

A run directory belongs to one process at a time (:func:`cdp_jax.run_directory.own`); what a
resume may change, the presets and loading a trained policy are in :mod:`cdp_jax.run_config`.
``config.json`` also records the content of the dataset trained on
(:func:`cdp_jax.data.fingerprint.record`); a resume refuses a dataset whose content changed
unless told to accept it (:func:`cdp_jax.run_directory.check_dataset`).

An interrupt (Ctrl-C, or SIGTERM under :func:`cdp_jax.interrupts.handled`) stops training between
two calls of the device part and loses nothing: the state of the last step whose logs and
evaluations are complete is checkpointed if no checkpoint holds it yet (and it is finite), every
checkpoint is written whole or not at all, and :func:`train` raises a
:class:`cdp_jax.interrupts.Interrupted` that names the step, the checkpoint kept and the command
that resumes; ``--resume`` then continues exactly (:func:`interrupted_training`).

Before compiling, :func:`train` checks that the batches of one call and the dataset fit in device
memory; a checkpoint is written only if every parameter and optimiser-state value is finite.

:func:`cdp_jax.multi_seed.train_seeds` trains several seeds as one vmapped program
(:func:`make_seeds_chunk`) and writes ``runs/<name>/seed_<k>/`` as :func:`train` would for each; both
take a ``parallel_mode`` (:mod:`cdp_jax.parallel`: batches or seeds split over a device mesh, across
hosts too). The evaluations of a run live in :mod:`cdp_jax.policy_evaluation`, the checks around
it (resume, finite values, write errors) in :mod:`cdp_jax.run_guards`; both are re-exported here.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import checkpoint, evaluation, files, interrupts, parallel, run_directory
from cdp_jax import logging as run_logging
from cdp_jax.agents import DATA, get_agent
from cdp_jax.data import buffer, fingerprint, minari, protocol
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data.normalization import Normalizer
from cdp_jax.policy_evaluation import (  # noqa: F401 (re-exported: training.run_evaluation, ...)
    RESET_SEED_STRIDE,
    eval_num_envs,
    eval_protocol,
    eval_reset_seeds,
    make_eval_envs,
    make_policy,
    run_evaluation,
)
from cdp_jax.run_config import TrainConfig, check_resume, config_dict, resolve_agent_config
from cdp_jax.run_guards import (  # noqa: F401 (re-exported)
    TrainingDivergedError,
    _check_finite,
    _last_checkpoint,
    check_fresh_or_resume,
    check_state_finite,
    explain_write_errors,
    lr_schedule_note,
    process_dir,
    restore_for_resume,
    resume_step,
)


def make_train_chunk(agent, num_updates: int, batch_size: int, batch_sharding=None):
    """``(state, arrays, key[, num_rows]) -> (state, metrics)``: ``num_updates`` updates in one
    ``lax.scan``.

    Batches are drawn on device from ``arrays`` (rows ``(N, ...)``) as ``(K, B, ...)``, uniformly
    among the first ``num_rows`` rows (default ``N``; a traced count lets seeds with datasets of
    different sizes share one padded, static shape); ``metrics`` is a dict of ``(K,)`` arrays.
    Gradient step ``n`` (``state.step``) draws its batch and its update key from
    ``fold_in(key, n)``: with the same ``key`` for every chunk (as :func:`train` passes the run's
    key), the updates do not depend on how they are grouped into chunks, so ``updates_per_call``
    changes the speed only.
    ``batch_sharding`` (e.g. :func:`cdp_jax.parallel.batch_axis`) splits the batches over a mesh
    (data parallelism). Not jitted here: wrap in ``jax.jit`` (and ``jax.vmap`` with
    ``in_axes=(0, None, 0)`` to train a batch of seeds, or see :func:`make_seeds_chunk`).
    """

    def train_chunk(state, arrays, key, num_rows=None):
        num_rows = buffer.num_rows(arrays) if num_rows is None else num_rows
        steps = state.step + jnp.arange(num_updates, dtype=jnp.int32)
        step_keys = jax.vmap(lambda n: jax.random.split(jax.random.fold_in(key, n)))(steps)
        idx = jax.vmap(lambda k: jax.random.randint(k, (batch_size,), 0, num_rows))(
            step_keys[:, 0])
        batches = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), arrays)
        batches = parallel.constrain(batches, batch_sharding)
        keys = step_keys[:, 1]

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
    keys ``(S, 2)``; each seed's key is used as :func:`train` uses a single run's (returned
    unchanged), so seed ``s`` draws the batches and noise of a single-seed run. With
    ``per_seed_data`` the arrays are ``(S, N_max, ...)`` with ``num_rows (S,)`` valid rows each;
    otherwise one ``(N, ...)`` set and a scalar ``num_rows`` are shared. ``metrics`` are
    ``(S, K)``. Not jitted here.
    """
    chunk = make_train_chunk(agent, num_updates, batch_size, batch_sharding)

    def one_seed(state, arrays, num_rows, key):
        state, metrics = chunk(state, arrays, key, num_rows)
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
    observations (``config.obs_normalizer``: mean / std, or min-max onto ``[-1, 1]``), or is the
    identity with ``config.normalize_obs=False``.

    ``"transitions"`` agents get ``observations, actions, rewards, next_observations, terminals``
    (rewards normalised by ``config.reward_normalization``, then ``* reward_scale + reward_bias``);
    ``"windows"`` agents get ``observations (N, H, D)`` and ``actions (N, A, act_dim)``. With
    ``fraction_unit="transitions"`` a random ``fraction`` of the rows is kept, after fitting the
    normaliser on all of them (as the official code does). Raises ``DatasetValueError`` (a
    ValueError) on NaN / inf or on an action with ``|a| > 1``.
    """
    dataset_lib.check_values(data, action_bound=1.0)  # finite arrays, |a| <= 1, even with a NaN
    if norm is None:
        norm = (Normalizer.fit(data.observations, config.obs_normalizer) if config.normalize_obs
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


def train(config: TrainConfig, agent_config, parallel_mode: str = "none", *,
          accept_changed_data: bool = False) -> dict:
    """Train (or resume) a run; returns a summary (run dir, steps, wall time, evaluations).

    ``parallel_mode="data"`` replicates the state and the dataset over all devices (all hosts
    after ``jax.distributed.initialize``) and splits every batch across them; the result equals
    the single-device run up to float reassociation. Only process 0 writes checkpoints.

    Raises, before any compilation: ``ValueError`` for an invalid configuration or, on resume, one
    that differs from the saved run's; ``FileNotFoundError`` (resume: no run there) or
    ``FileExistsError`` (no resume: a run is there); :class:`cdp_jax.run_directory.RunLockedError`
    (another process owns the run directory); :class:`cdp_jax.parallel.DeviceMemoryError`;
    :class:`cdp_jax.checkpoint.CheckpointError`;
    :class:`cdp_jax.run_directory.DatasetChangedError` (resume: the dataset's content changed
    since the run started, and ``accept_changed_data`` is false; with it, the change is recorded
    in ``environment.json``). While training: :class:`TrainingDivergedError`. On an interrupt:
    :class:`cdp_jax.interrupts.Interrupted` (module doc).
    """
    config.validate()
    try:
        return _train(config, agent_config, parallel_mode, accept_changed_data)
    except KeyboardInterrupt as err:
        if isinstance(err, interrupts.Interrupted) and err.message:
            raise
        raise interrupted_training(err, config, parallel_mode) from None


def _train(config: TrainConfig, agent_config, parallel_mode: str,
           accept_changed_data: bool) -> dict:
    start_time = time.perf_counter()
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
    data_record = fingerprint.record(data)
    data_note, data_change = (run_directory.check_dataset(run_dir, data_record,
                                                          accept_changed_data)
                              if config.resume else (None, None))
    arrays, norm = prepare_arrays(data, config.agent, agent_config, config)
    parallel.check_memory(arrays, config.updates_per_call, config.batch_size,
                          1 if mesh is None else mesh.size)
    envs = make_eval_envs(data, config)  # fails on a dimension mismatch before any compilation
    step = 0
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(envs.close)
        # Entered before the logger: also explains a failure of the logger's last flush.
        cleanup.enter_context(explain_write_errors(ckpt, lambda: step))
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
            run_directory.write_json(run_dir / "config.json",
                                     {**config_dict(config, agent_config), "dataset": data_record})
            run_directory.record_environment(run_dir, step, extra=data_change)
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
        for note in (data_note, lr_schedule_note(config, agent_config)):
            if note:
                logger.write(note)
        chunks, act_fn = {}, jax.jit(agent.act)
        protocol = eval_protocol(config.agent, agent_config, config)
        meta = {"config": config_dict(config, agent_config), "normalizer": norm.to_dict(),
                "dataset": {"id": data.dataset_id, "obs_keys": list(data.obs_keys),
                            "obs_dim": data.obs_dim, "action_dim": data.act_dim}}
        done = (step, state)  # the last step whose logs and evaluations are complete
        try:
            while step < config.steps:
                k = min(config.updates_per_call, config.steps - step)
                if k not in chunks:
                    chunks[k] = jax.jit(make_train_chunk(agent, k, config.batch_size,
                                                         batch_sharding), **jit_kwargs)
                new_state, metrics = call_chunk(chunks[k], (state, arrays, key_train), config)
                _check_finite(metrics, step, ckpt)
                state, step = new_state, step + k
                logger.log_train(step, {name: np.mean(v) for name, v in metrics.items()})
                last = step == config.steps
                due_eval = (config.eval_every and step % config.eval_every == 0) or last
                due_save = (((config.checkpoint_every and step % config.checkpoint_every == 0)
                             or last) and jax.process_index() == 0)
                if due_eval or due_save:  # never evaluate or save non-finite parameters
                    check_state_finite(state, step, ckpt)
                score = None
                if due_eval:
                    result = run_evaluation(act_fn, config.agent, state, data, norm, envs, config,
                                            step)
                    entry = record.add(step, result, protocol)
                    logger.log_eval(step, entry)
                    score = entry.get("normalized_score", entry["return_mean"])
                    metric = "normalized_score" if "normalized_score" in entry else "return_mean"
                    logger.write(f"step {step}: {metric.replace('_', ' ')} "
                                 f"{evaluation.format_score(entry, metric)}"
                                 f"{evaluation.format_success(entry)}")
                if due_save:
                    with interrupts.deferred():  # a checkpoint is written whole or not at all
                        logger.flush()  # the events up to a checkpoint are on disk before it
                        ckpt.save(step, parallel.to_host({"state": state, "rng": key_train}),
                                  {**meta, "eval_history": record.history, "finite": True},
                                  score=score)
                logger.reset_timer()
                done = (step, state)
        except KeyboardInterrupt as err:
            at, state = done
            note = save_interrupted([ckpt], at, {"state": state, "rng": key_train}, [meta],
                                    [record.history], [logger])
            raise interrupted_training(err, config, parallel_mode, at, note) from None
    return {"run_dir": str(run_dir), "steps": step, "wall_time_s": time.perf_counter() - start_time,
            "eval": record.summary(), "checkpoints": str(ckpt.directory)}


def call_chunk(chunk, args: tuple, config: TrainConfig) -> tuple:
    """``chunk(*args)`` with its metrics (the last output) on the host; the allocator's
    out-of-memory error becomes a :class:`cdp_jax.parallel.DeviceMemoryError` naming
    ``batch_size`` and ``updates_per_call``."""
    try:
        *outputs, metrics = chunk(*args)
        return (*outputs, parallel.to_host(metrics))
    except jax.errors.JaxRuntimeError as err:
        if (oom := parallel.out_of_memory(err, config.batch_size,
                                          config.updates_per_call)) is not None:
            raise oom from None
        raise


def save_interrupted(ckpts: list, step: int, tree: dict, metas: list, histories: list,
                     loggers: list, stacked: bool = False) -> str:
    """After an interrupt: checkpoint ``tree`` (``{"state", "rng"}`` at ``step``, the last step
    whose logs and evaluations are complete; with ``stacked``, leaves ``(seeds, ...)`` of which
    seed ``i`` goes to ``ckpts[i]``) in every manager of ``ckpts``, unless it is step 0 or a
    checkpoint at or after ``step`` exists.

    Written with further interrupts held, each whole or not at all, with the evaluations up to
    ``step``: those of the step the interrupt cut short belong to the abandoned attempt, as do the
    logs after ``step``, which a resume drops. Returns ``""``, or why ``step`` was not saved:
    non-finite values, or a write the file system refused (then no seed keeps it).
    """
    latest = ckpts[0].latest_step()
    if step == 0 or (latest is not None and latest >= step) or jax.process_index() != 0:
        return ""
    with interrupts.deferred():
        try:
            check_state_finite(tree["state"], step, ckpts[0])
        except TrainingDivergedError:
            return f"step {step} was not saved (non-finite values)"
        host = parallel.to_host(tree)
        try:
            for i, ckpt in enumerate(ckpts):
                kept = [e for e in histories[i] if e["gradient_step"] <= step]
                score = next((e.get("normalized_score", e["return_mean"]) for e in kept
                              if e["gradient_step"] == step), None)
                loggers[i].flush()  # the events up to a checkpoint are on disk before it
                ckpt.save(step, jax.tree.map(lambda x, i=i: x[i], host) if stacked else host,
                          {**metas[i], "eval_history": kept, "finite": True, "interrupted": True},
                          score=score)
        except files.WriteError as err:
            for ckpt in ckpts:  # the seeds keep their checkpoint steps in common
                ckpt.discard_after(step - 1)
            return f"step {step} could not be saved ({err.cause})"
    return ""


def resume_args(config: TrainConfig, parallel_mode: str = "none",
                seeds: tuple[int, ...] | None = None) -> tuple[str, ...]:
    """The ``experiments/train.py`` arguments that resume the run of ``config`` (its
    ``config.json`` holds the rest): ``[--seeds S] --name N | --run-dir D [--parallel P]
    --resume``."""
    args = ("--seeds", format_seeds(seeds)) if seeds else ()
    args += ("--run-dir", str(config.run_dir)) if config.run_dir else ("--name", config.name)
    if parallel_mode != "none":
        args += ("--parallel", parallel_mode)
    return args + ("--resume",)


def format_seeds(seeds) -> str:
    """``"0-4"`` for consecutive seeds, else ``"0,3,5"`` (as ``--seeds`` takes them)."""
    seeds = [int(s) for s in seeds]
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def interrupted_training(err: BaseException, config: TrainConfig, parallel_mode: str = "none",
                         step: int | None = None, note: str = "",
                         seeds: tuple[int, ...] | None = None) -> interrupts.Interrupted:
    """The :class:`cdp_jax.interrupts.Interrupted` of a run stopped by ``err``: ``interrupted at
    step S of N; last checkpoint kept: step C (<run>/checkpoints); resume with: python
    experiments/train.py ... --resume``.

    ``step``: the last step completed (default, and at least: the last checkpoint's); ``note``:
    why that step was not saved; ``seeds``: a ``--seeds`` run's seeds (checkpoints under
    ``<run>/seed_<k>/checkpoints``). A run stopped before its ``config.json`` was written has
    nothing to resume: the line says to start it again.
    """
    run = config.path / f"seed_{seeds[0]}" if seeds else config.path
    kept = checkpoint.list_steps(run / "checkpoints")
    kept = kept[-1] if kept else None
    signum = interrupts.signal_of(err)
    text = f"interrupted at step {max(step or 0, kept or 0)} of {config.steps}"
    if signum != interrupts.SIGNALS[0]:
        text += f" ({interrupts.describe_signal(signum)})"
    text += f"; {note}" if note else ""
    where = config.path / "seed_*" / "checkpoints" if seeds else run / "checkpoints"
    text += (f"; last checkpoint kept: step {kept} ({where})" if kept is not None else
             "; no checkpoint was written")
    if (run / "config.json").is_file():
        then = interrupts.Then("resume with", resume_args(config, parallel_mode, seeds))
    else:
        then = interrupts.Then("start it again with")
    return interrupts.Interrupted(text, signum=signum, then=then)
