"""Several seeds as one program: ``vmap`` over the train state and PRNG keys.

:func:`train_seeds` trains N independent seeds with :func:`cdp_jax.training.make_seeds_chunk` (each
seed its own data subset and normaliser when a fraction is asked for, padded to one static shape),
evaluates all seeds in one vectorised rollout (seeds x envs) and writes ``runs/<name>/seed_<k>/``
exactly as :func:`cdp_jax.training.train` writes a single seed's run (up to float reassociation),
plus ``runs/<name>/seeds.json``. ``parallel_mode`` (:mod:`cdp_jax.parallel`) splits the seeds or the
batches over a device mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from cdp_jax import checkpoint, evaluation, interrupts, parallel, run_directory
from cdp_jax import logging as run_logging
from cdp_jax.agents import DATA, get_agent
from cdp_jax.configs.train import parse_seeds  # noqa: F401 (re-exported)
from cdp_jax.data import buffer, fingerprint, minari
from cdp_jax.data import dataset as dataset_lib
from cdp_jax.data.normalization import Normalizer
from cdp_jax.run_config import TrainConfig, check_resume, config_dict, resolve_agent_config
from cdp_jax.training import (
    _check_finite,
    call_chunk,
    check_fresh_or_resume,
    check_state_finite,
    eval_num_envs,
    eval_protocol,
    eval_reset_seeds,
    explain_write_errors,
    init_seeds,
    interrupted_training,
    lr_schedule_note,
    make_eval_envs,
    make_seeds_chunk,
    prepare_arrays,
    process_dir,
    restore_for_resume,
    resume_step,
    save_interrupted,
)


def seed_config(config: TrainConfig, seed: int) -> TrainConfig:
    """The single-seed run a seed of a batch equals: ``seed`` in ``<run dir>/seed_<seed>``."""
    return dataclasses.replace(config, seed=seed, run_dir=str(config.path / f"seed_{seed}"))


def stack_padded(per_seed: list[dict]) -> tuple[dict, np.ndarray]:
    """Per-seed arrays of different row counts -> ``(S, N_max, ...)`` (zero rows appended) and the
    valid counts ``(S,)``; the chunk samples only below each seed's count."""
    counts = np.asarray([buffer.num_rows(a) for a in per_seed], np.int32)
    width = int(counts.max())
    pad = lambda x: np.concatenate([x, np.zeros((width - len(x), *x.shape[1:]), x.dtype)])
    return jax.tree.map(lambda *xs: np.stack([pad(np.asarray(x)) for x in xs]), *per_seed), counts


def block_reset_seeds(seeds, envs_per_seed: int, episodes: int) -> list[int]:
    """The reset seeds of a rollout of ``S`` blocks of ``E`` envs in which block ``n`` plays the
    episodes of a single-seed evaluation of ``seeds[n]`` (:func:`eval_reset_seeds`: episode
    ``r E + i`` of round ``r``), ``ceil(episodes / E)`` rounds, in the order the envs reset."""
    e, rounds = envs_per_seed, -(-episodes // envs_per_seed)
    per_seed = [eval_reset_seeds(s, rounds * e) for s in seeds]
    return [block[r * e + i] for r in range(rounds) for block in per_seed for i in range(e)]


def evaluate_seeds(act_fn, agent_name, states, data, norms, envs, config: TrainConfig, seeds,
                   step: int) -> list[dict]:
    """All seeds in one vectorised rollout (``S x E`` envs, one vmapped ``act`` per env step);
    per seed the same keys, reset seeds and result dict as :func:`run_evaluation` (``E`` is
    :func:`eval_num_envs`: no more envs per seed than episodes)."""
    agent_config, num, per = states.config, len(seeds), eval_num_envs(config)
    windows = DATA[agent_name] == "windows"
    flat = lambda o: dataset_lib.flatten_observation(o, data.obs_keys).reshape(num, per, -1)
    obs_fn = lambda o: np.concatenate([np.asarray(n.normalize(x), np.float32)
                                       for n, x in zip(norms, flat(o), strict=True)])
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(s + 1_000_003), step) for s in seeds])
    calls = [0]

    def policy(obs, _):  # each seed folds its own key with the call count, as evaluate does
        call_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, calls[0])
        calls[0] += 1
        obs = jnp.asarray(obs, jnp.float32).reshape(num, per, *obs.shape[1:])
        actions = act_fn(states, obs, call_keys)
        return np.asarray(actions).reshape(num * per, *actions.shape[2:])

    rounds = -(-config.eval_episodes // per)
    out = evaluation.evaluate(
        policy, envs, keys[0], num_episodes=rounds * num * per, obs_fn=obs_fn,
        obs_horizon=agent_config.obs_horizon if windows else None,
        n_action=agent_config.n_action if windows else 1,
        reset_seeds=block_reset_seeds(seeds, per, config.eval_episodes),
        max_episode_steps=config.max_episode_steps)
    # (round, seed, env) -> per seed, episodes in the order of a single-seed evaluation
    names = ("returns", "lengths", "reset_seeds") + ("successes",) * (out["successes"] is not None)
    by_seed = {name: np.moveaxis(np.asarray(out[name]).reshape(rounds, num, per), 1, 0)
               .reshape(num, -1)[:, :config.eval_episodes] for name in names}
    results = []
    for n in range(num):
        successes = by_seed["successes"][n] if "successes" in by_seed else None
        result = evaluation.episode_summary(by_seed["returns"][n], successes,
                                            by_seed["lengths"][n], by_seed["reset_seeds"][n])
        result["timing"] = {**out["timing"], "seeds": num}  # the joint rollout of all seeds
        if data.ref_min_score is not None and data.ref_max_score is not None:
            result.update(evaluation.normalized_summary(
                minari.normalized_score(data, result["returns"])))
        results.append(result)
    return results


def train_seeds(config: TrainConfig, agent_config, seeds, parallel_mode: str = "none", *,
                accept_changed_data: bool = False) -> dict:
    """Train seeds ``seeds`` as one vmapped program; seed ``s`` equals ``train`` of
    :func:`seed_config` ``(config, s)`` (up to float reassociation of the batched matmuls) and
    writes the same outputs to ``<run dir>/seed_<s>/``, plus ``<run dir>/seeds.json``.

    With a ``fraction`` / ``num_episodes``, each seed keeps its own episodes and observation
    normaliser (arrays padded to a common length, see :func:`stack_padded`). ``parallel_mode``:
    ``"seeds"`` splits the seeds over the devices, ``"data"`` every seed's batch. A changed
    dataset (``accept_changed_data``) and an interrupt are handled as by
    :func:`cdp_jax.training.train`, every seed alike: an interrupt checkpoints all seeds at one
    step, and its line's command resumes them all (``--seeds ... --resume``).
    """
    config.validate()
    seeds = tuple(int(s) for s in seeds)
    try:
        return _train_seeds(config, agent_config, seeds, parallel_mode, accept_changed_data)
    except KeyboardInterrupt as err:
        if isinstance(err, interrupts.Interrupted) and err.message:
            raise
        raise interrupted_training(err, config, parallel_mode, seeds=seeds) from None


def _train_seeds(config: TrainConfig, agent_config, seeds: tuple[int, ...], parallel_mode: str,
                 accept_changed_data: bool) -> dict:
    start_time = time.perf_counter()
    configs = [seed_config(config, s) for s in seeds]
    saved_agent = None
    for c in configs if config.resume else ():
        saved_agent = check_resume(c, agent_config)
    agent_config = resolve_agent_config(config, agent_config, saved_agent)
    agent = get_agent(config.agent)
    mesh = parallel.make_mesh(parallel_mode)
    parallel.check_divisible(mesh, len(seeds) if parallel_mode == "seeds" else config.batch_size,
                             "number of seeds" if parallel_mode == "seeds" else "batch_size")
    ckpts = [checkpoint.CheckpointManager(c.path / "checkpoints", keep=c.keep_checkpoints)
             for c in configs]
    for c, m in zip(configs, ckpts, strict=True):
        check_fresh_or_resume(c, m)
    starts = [resume_step(c, m) for c, m in zip(configs, ckpts, strict=True)]
    if len(set(starts)) > 1:
        raise checkpoint.CheckpointError(f"--resume: the seeds' latest checkpoints differ "
                                         f"({dict(zip(seeds, starts, strict=True))}); pass "
                                         "--resume-from with a step all of them have.")
    per_seed_data = config.fraction is not None or config.num_episodes is not None
    datas = [minari.load(c.dataset, fraction=c.episode_fraction, num_episodes=c.num_episodes,
                         seed=c.seed)
             for c in (configs if per_seed_data else configs[:1])]
    data = datas[0]
    data_records = [fingerprint.record(d) for d in datas] * (len(seeds) // len(datas))
    checked = [run_directory.check_dataset(c.path, r, accept_changed_data) if config.resume
               else (None, None) for c, r in zip(configs, data_records, strict=True)]
    prepared = ([prepare_arrays(d, config.agent, agent_config, c)
                 for d, c in zip(datas, configs, strict=True)] if per_seed_data else
                [prepare_arrays(data, config.agent, agent_config, config)] * len(seeds))
    split_seeds = mesh.size if parallel_mode == "seeds" else 1
    parallel.check_memory(max((p[0] for p in prepared), key=buffer.num_rows),
                          config.updates_per_call, config.batch_size,
                          mesh.size if parallel_mode == "data" else 1, -(-len(seeds) // split_seeds))
    envs = make_eval_envs(data, config, copies=len(seeds))
    step = 0
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(envs.close)
        cleanup.enter_context(explain_write_errors(ckpts[0], lambda: step))  # every seed alike
        for c, m in zip(configs, ckpts, strict=True):
            cleanup.enter_context(run_directory.own(process_dir(c.path)))
            check_fresh_or_resume(c, m)  # again, now that no other process can write
        if jax.process_index() == 0:
            for c, r in zip(configs, data_records, strict=True):
                run_directory.write_json(c.path / "config.json",
                                         {**config_dict(c, agent_config), "dataset": r})

        key_pairs = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
        states = init_seeds(agent, key_pairs[:, 0], agent_config, data.obs_dim, data.act_dim)
        key_train, step, start = key_pairs[:, 1], 0, starts[0]
        histories = [[] for _ in seeds]
        if start is not None:
            target = {"state": jax.tree.map(lambda x: x[0], states), "rng": key_train[0]}
            trees, metas = zip(*[restore_for_resume(m, target, start) for m in ckpts],
                               strict=True)
            states = jax.tree.map(lambda *x: jnp.stack(x), *[t["state"] for t in trees])
            key_train = jnp.stack([t["rng"] for t in trees])
            step, histories = start, [m["eval_history"] for m in metas]
            norms = [Normalizer.from_dict(m["normalizer"]) for m in metas]
            prepared = ([prepare_arrays(d, config.agent, agent_config, c, n)
                         for d, c, n in zip(datas, configs, norms, strict=True)]
                        if per_seed_data else
                        [prepare_arrays(data, config.agent, agent_config, config, norms[0])]
                        * len(seeds))
            for m in ckpts if jax.process_index() == 0 else ():
                m.discard_after(step)
        if jax.process_index() == 0:  # once the restore worked: the software of this attempt
            software = run_directory.environment()  # one query for all the seeds
            for c, (_, change) in zip(configs, checked, strict=True):
                run_directory.record_environment(c.path, step, software, extra=change)
        norms = [p[1] for p in prepared]
        if per_seed_data:
            arrays, num_rows = stack_padded([p[0] for p in prepared])
        else:
            arrays, num_rows = prepared[0][0], np.int32(buffer.num_rows(prepared[0][0]))
        seed_sharding = parallel.leading(mesh) if parallel_mode == "seeds" else None
        data_sharding = seed_sharding if per_seed_data else None
        if mesh is not None and parallel_mode == "data":
            states, key_train = parallel.put((states, key_train), parallel.replicated(mesh))
            data_sharding = parallel.replicated(mesh)
        elif seed_sharding is not None:
            states, key_train = parallel.put((states, key_train), seed_sharding)
            data_sharding = data_sharding or parallel.replicated(mesh)
        arrays, num_rows = parallel.put((arrays, num_rows), data_sharding)  # on device once
        batch_sharding = parallel.batch_axis(mesh) if parallel_mode == "data" else None
        jit_kwargs = {} if mesh is None else {"out_shardings": seed_sharding or
                                              parallel.replicated(mesh)}

        records = [evaluation.EvalRecord(process_dir(c.path) / "eval.json", c.running_average, h)
                   for c, h in zip(configs, histories, strict=True)]
        loggers = [cleanup.enter_context(contextlib.closing(run_logging.RunLogger(
            process_dir(c.path), c.steps, step, c.progress and i == 0, resumed=c.resume)))
            for i, c in enumerate(configs)]
        if start is not None:
            for record in records:
                record.write()  # evaluations after the checkpoint belong to the abandoned attempt
        data_notes = [note for note, _ in checked if note]
        if data_notes:  # the seeds alike: one line
            loggers[0].write(data_notes[0] + (f" (so for {len(data_notes)} seeds)"
                                              if len(data_notes) > 1 else ""))
        if note := lr_schedule_note(config, agent_config):
            loggers[0].write(note)
        chunks, act_fn = {}, jax.jit(jax.vmap(agent.act))
        protocol = eval_protocol(config.agent, agent_config, config)
        metas = [{"config": config_dict(c, agent_config), "normalizer": n.to_dict(),
                  "dataset": {"id": d.dataset_id, "obs_keys": list(d.obs_keys),
                              "obs_dim": d.obs_dim, "action_dim": d.act_dim}}
                 for c, n, d in zip(configs, norms, datas * (len(seeds) // len(datas)),
                                    strict=True)]
        done = (step, states, key_train)  # the last step whose logs and evaluations are done
        try:
            while step < config.steps:
                k = min(config.updates_per_call, config.steps - step)
                if k not in chunks:
                    chunks[k] = jax.jit(make_seeds_chunk(agent, k, config.batch_size,
                                                         per_seed_data, batch_sharding),
                                        **jit_kwargs)
                new_states, new_keys, metrics = call_chunk(
                    chunks[k], (states, arrays, num_rows, key_train), config)
                for i, ckpt in enumerate(ckpts):
                    _check_finite({name: v[i] for name, v in metrics.items()}, step, ckpt)
                states, key_train, step = new_states, new_keys, step + k
                for i, logger in enumerate(loggers):
                    logger.log_train(step, {name: np.mean(v[i]) for name, v in metrics.items()})
                last = step == config.steps
                due_eval = (config.eval_every and step % config.eval_every == 0) or last
                due_save = (((config.checkpoint_every and step % config.checkpoint_every == 0)
                             or last) and jax.process_index() == 0)
                if due_eval or due_save:  # never evaluate or save non-finite parameters
                    check_state_finite(states, step, ckpts[0])  # leaves (seeds, ...)
                scores = [None] * len(seeds)
                if due_eval:
                    # one local copy per evaluation (a sharded or multi-host state cannot feed
                    # the per-process rollout); then every env step's act stays on device
                    host_states = (parallel.put(parallel.to_host(states), None)
                                   if mesh is not None else states)
                    results = evaluate_seeds(act_fn, config.agent, host_states, data, norms,
                                             envs, config, seeds, step)
                    for i, result in enumerate(results):
                        entry = records[i].add(step, result, protocol)
                        loggers[i].log_eval(step, entry)
                        scores[i] = entry.get("normalized_score", entry["return_mean"])
                    loggers[0].write(f"step {step}: normalized score per seed "
                                     f"{[round(x, 1) for x in scores]}")
                if due_save:
                    # all seeds or none: a resume needs one checkpoint step they all have
                    with interrupts.deferred():
                        host = parallel.to_host({"state": states, "rng": key_train})
                        for i, ckpt in enumerate(ckpts):
                            loggers[i].flush()  # the events up to a checkpoint are on disk first
                            ckpt.save(step, jax.tree.map(lambda x, i=i: x[i], host),
                                      {**metas[i], "eval_history": records[i].history,
                                       "finite": True}, score=scores[i])
                for logger in loggers:
                    logger.reset_timer()
                done = (step, states, key_train)
        except KeyboardInterrupt as err:
            at, states, key_train = done
            note = save_interrupted(ckpts, at, {"state": states, "rng": key_train}, metas,
                                    [r.history for r in records], loggers, stacked=True)
            raise interrupted_training(err, config, parallel_mode, at, note, seeds) from None
    summaries = {s: r.summary() for s, r in zip(seeds, records, strict=True)}
    finals = [e["last"][e["metric"]] for e in summaries.values() if e]
    summary = {"run_dir": str(config.path), "seeds": list(seeds), "steps": step,
               "parallel": parallel_mode, "wall_time_s": time.perf_counter() - start_time,
               "eval": summaries, "last_mean": float(np.mean(finals)) if finals else None,
               "last_std": float(np.std(finals)) if finals else None}
    if jax.process_index() == 0:
        run_directory.write_json(config.path / "seeds.json", summary)
    return summary
