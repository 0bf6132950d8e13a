"""Train a (contractive) diffusion or flow policy offline and evaluate it in its environment.

With no arguments this is the project's main command: it builds the local PointMaze umaze dataset
(``cdp/pointmaze/umaze-v0``) if it is missing, trains EDP + Diffusion-QL with the contraction
penalty (weight 0.1) for 3000 gradient steps, evaluates, and prints the normalised score and where
the logs and checkpoints went (``runs/quickstart/``)::

    python experiments/train.py
    python experiments/train.py --agent dbc --steps 5000 --contraction-weight 1.0
    python experiments/train.py --preset full --dataset D4RL/pointmaze/umaze-v2 --name pm_full
    python experiments/train.py --preset paper --dataset cdp/hopper/medium-replay-v0
    python experiments/train.py --preset paper --dataset my/dataset-v0 --set eta=1 \
        --set candidate_temperature=100 --reward-normalization returns_range
    python experiments/train.py --preset paper-il --dataset cdp/fetch/push-v0
    python experiments/train.py --preset fql --dataset cdp/hopper/medium-expert-v0 --set alpha=3
    python experiments/train.py --preset fql-cdp --dataset cdp/hopper/medium-expert-v0 --set alpha=3
    python experiments/train.py --preset flow-bc-cdp --dataset cdp/fetch/push-v0 --set obs_horizon=2
    python experiments/train.py --set eta=2.0 --set contraction.penalty=frobenius
    python experiments/train.py --name quickstart --resume        # continue after an interruption
    python experiments/train.py --name quickstart --resume --steps 6000   # train it longer
    python experiments/train.py --name quickstart --resume-from 2000  # from an earlier checkpoint
    python experiments/train.py --seeds 0-9 --fraction 0.1   # 10 seeds in one jitted program
    python experiments/train.py --seeds 0-7 --parallel seeds # seeds split across the devices
    python experiments/train.py --parallel data --device gpu # each batch split across GPUs

``--preset paper`` (offline RL) and ``--preset paper-il`` (imitation) are the official CDP pipeline
number for number (docs/PARITY.md); ``paper`` takes eta, the evaluation softmax temperature, the
episode cap, the reward normalisation and the TD samples from the dataset's row of the official
table (cdp_jax.paper.TASKS); a dataset with no row needs ``--set eta=...`` and
``--set candidate_temperature=...``. ``--preset paper-fast`` and ``--preset paper-il-fast`` are the
same pipelines with the official penalty estimated without a Jacobian (forward-mode probe pairs on a
random subsample of the penalised samples; unbiased; docs/MATH.md, "The fast penalty").

``--seeds`` trains the seeds as one vmapped program (each its own episodes when a fraction is
asked for) and writes ``runs/<name>/seed_<k>/`` exactly as a single-seed run would, plus
``runs/<name>/seeds.json``. ``--distributed`` calls ``jax.distributed.initialize()`` first (one
process per host, cluster settings from the environment), then the same meshes span every host.

Every ``TrainConfig`` field is a flag (``--eval-every``, ``--batch-size``, ...); every agent field
is reachable with ``--set FIELD=VALUE`` (nested: ``--set contraction.window=1.0``).

Resuming: ``--resume`` continues the run in ``runs/<name>`` (or ``--run-dir``) from its latest
checkpoint, with the configuration saved in its ``config.json``: no flag needs retyping. Flags
given with ``--resume`` override the saved values, and only these may change: ``--steps``,
``--eval-every``, ``--checkpoint-every``, ``--keep-checkpoints``, ``--progress`` and
``--eval-vector``; any other flag that differs from the saved run (``--batch-size``,
``--dataset``, ``--set ...``) is refused, naming each field with its saved and requested values.
(With ``--preset`` given explicitly, the preset's values count as requested too.) The cosine
decay of the learning rate keeps the span it was started with: steps beyond it train at a learning
rate of 0 (a note says so). ``--resume-from STEP`` (implies ``--resume``) continues from the
checkpoint at STEP instead of the latest, e.g. when the latest is damaged; the later checkpoints
are moved to ``checkpoints/discarded/`` and the logs after STEP are dropped. A run directory
belongs to one process at a time: a second process on it stops with an error.

Evaluation: every evaluation of a run with ``--seed S`` plays ``--eval-episodes`` episodes from
the same start states: episode ``k`` resets its environment with seed ``100000 S + k`` (also with
``--seeds``, per seed; ``experiments/evaluate.py`` uses the same by default). Scores are printed as
the mean over the episodes ± its standard error (``s.e.``); the success rate only for environments
that report success (not MuJoCo locomotion).

Stopping: Ctrl-C or SIGTERM (what schedulers send) stops a run between two jitted calls with one
line: the step it stopped at, the last checkpoint kept (the stopping step itself, saved if it
was between checkpoints) and the command that resumes; exit status 130. A run records its
dataset's content (``config.json``, ``"dataset"``: id, episodes, transitions, sha256 of the
arrays); ``--resume`` refuses data that changed since, unless ``--accept-changed-data``.

Speed only: a preset's ``--updates-per-call`` (K gradient steps per jitted call) that does not
divide ``--steps``, ``--eval-every`` or ``--checkpoint-every`` is lowered to the largest K that
does, with a note; the updates do not depend on K (step n draws from the run's key folded with
n). A K given on the command line is kept, and refused if it does not divide them.

Errors in the input (an invalid value, a missing dataset or run, a damaged checkpoint) are
printed as one ``error: ...`` line with exit status 2, before JAX starts where the input alone
shows the error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

# Only JAX-free modules here: --help and a bad value are answered before JAX starts (main()
# imports the rest once the configuration is valid).
from cdp_jax import cli, paper
from cdp_jax.configs import CONFIGS, fields, names
from cdp_jax.configs import train as train_config

# Local datasets train.py builds by itself when missing: id -> pointmaze maze name.
BUILDABLE = {"cdp/pointmaze/umaze-v0": "umaze", "cdp/pointmaze/medium-v0": "medium",
             "cdp/pointmaze/large-v0": "large"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, choices=sorted(train_config.PRESETS),
                        help="named configuration the other flags override (default: quickstart; "
                             "paper / paper-il: the official CDP pipeline; with --resume: the "
                             "run's saved config.json)")
    defaults = train_config.TrainConfig()
    for field, kind in fields.field_types(train_config.TrainConfig).items():
        flag = "--" + field.replace("_", "-")
        if field == "resume":
            parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                                help="continue the run in runs/<name> (or --run-dir) from its "
                                     "latest checkpoint with its saved configuration; other "
                                     "flags override it, but only "
                                     f"{', '.join(train_config.RESUME_MAY_CHANGE)} may change")
        elif field == "resume_from":
            parser.add_argument("--resume-from", type=str, default=None, metavar="STEP",
                                help="with --resume (implied): continue from the checkpoint at "
                                     "STEP instead of the latest (e.g. the latest is damaged); "
                                     "later checkpoints move to checkpoints/discarded/")
        elif field == "agent":
            parser.add_argument("--agent", choices=sorted(CONFIGS), default=None,
                                help="dql: EDP + Diffusion-QL (default); dbc: diffusion BC; "
                                     "idql: IQL critic + resampled diffusion BC; fql: Flow "
                                     "Q-Learning; flow_bc: flow-matching BC")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default from the preset; base {getattr(defaults, field)})")
        else:
            parser.add_argument(flag, type=str, default=None, metavar=field.upper(),
                                help=f"TrainConfig.{field} (base {getattr(defaults, field)!r})")
    parser.add_argument("--contraction-weight", type=float, default=None,
                        help="contraction penalty weight gamma (0: the vanilla algorithm)")
    parser.add_argument("--candidates", type=fields.positive_int, default=None,
                        help="DQL: critic-resampled candidate actions at evaluation (official 100)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an agent config field, e.g. eta=2 or contraction.window=1")
    parser.add_argument("--seeds", default=None, metavar="SEEDS",
                        help="train several seeds in one program: '0-9' or '0,3,5' (overrides --seed)")
    parser.add_argument("--parallel", choices=names.PARALLEL_MODES, default="none",
                        help="none; data: split each batch over all devices; seeds: split the "
                             "seeds over all devices")
    parser.add_argument("--device", choices=names.DEVICE_KINDS, default="auto",
                        help="refuse to run unless JAX's backend is this one (no silent CPU "
                             "fallback)")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: jax.distributed.initialize() before anything else")
    parser.add_argument("--build-steps", type=fields.positive_int, default=200_000,
                        help="environment steps recorded if a local PointMaze dataset is built")
    parser.add_argument("--accept-changed-data", action="store_true",
                        help="with --resume: continue although the dataset's content changed "
                             "since the run started (recorded in the run's environment.json)")
    return parser.parse_args(argv)


def make_configs(args):
    """(TrainConfig, agent config) from the preset and the flags; validated before any compile.

    With ``--resume`` (and no explicit ``--preset``): the run's saved configuration, overridden by
    the flags given (:func:`cdp_jax.run_config.resume_configs`).
    """
    overrides = {}
    for field in fields.field_types(train_config.TrainConfig):
        value = getattr(args, field)
        if value is not None:
            overrides[field] = (value if isinstance(value, bool) else
                                fields.parse_field_value(train_config.TrainConfig, field, value))
    if overrides.get("resume_from") is not None:
        overrides["resume"] = True
    agent_sets = list(args.set)
    if args.contraction_weight is not None:
        agent_sets.insert(0, f"contraction.weight={args.contraction_weight}")
    if args.candidates is not None:
        agent_sets.insert(0, f"num_candidates={args.candidates}")
    preset = args.preset or "quickstart"
    default_agent = next(k for k in train_config.PRESETS[preset] if k != "train")
    agent = overrides.get("agent", default_agent)
    name = overrides.get("name", preset if agent == default_agent else f"{preset}_{agent}")
    if overrides.get("resume") and args.preset is None:
        run_dir = train_config.TrainConfig(name=name, run_dir=overrides.get("run_dir")).validate().path
        saved_dir = run_dir
        if args.seeds is not None:  # each seed's config.json: the first seed's stands for all
            saved_dir = run_dir / f"seed_{train_config.parse_seeds(args.seeds)[0]}"
        from cdp_jax.run_config import resume_configs  # noqa: PLC0415 (reads the saved run)

        config, agent_config = resume_configs(saved_dir, overrides, agent_sets)
        return dataclasses.replace(config, run_dir=str(run_dir)).validate(), agent_config
    overrides.pop("agent", None)
    return train_config.preset(preset, agent, agent_sets, **{"name": name, **overrides})


def ensure_dataset(dataset_id: str, build_steps: int) -> None:
    """Build a local PointMaze dataset if it is missing (other ids must be downloaded)."""
    import tqdm  # noqa: PLC0415

    from cdp_jax.data import dataset as dataset_lib  # noqa: PLC0415
    from cdp_jax.data import minari  # noqa: PLC0415
    from cdp_jax.data.builders import pointmaze  # noqa: PLC0415

    try:
        minari.load(dataset_id, num_episodes=1)
        return
    except dataset_lib.DatasetNotFoundError:
        if dataset_id not in BUILDABLE:
            raise
    print(f"Dataset {dataset_id} not found: building it ({build_steps} steps)...", flush=True)
    with tqdm.tqdm(total=build_steps, unit="step", desc="build dataset") as bar:
        summary = pointmaze.build(BUILDABLE[dataset_id], num_steps=build_steps,
                                  dataset_id=dataset_id, progress=bar.update)
    print(f"Built {dataset_id} at {summary['path']} in {summary['seconds']:.0f} s.", flush=True)


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    config, agent_config = make_configs(args)
    seeds = train_config.parse_seeds(args.seeds) if args.seeds is not None else None
    if args.parallel == "seeds" and seeds is None:
        raise ValueError("--parallel seeds needs --seeds (e.g. --seeds 0-3).")
    # The configuration is valid: now JAX and the library's heavy modules.
    from cdp_jax import evaluation, multi_seed, parallel, run_config, training  # noqa: PLC0415

    try:
        print(parallel.setup(args.device, args.distributed), flush=True)
    except RuntimeError as err:  # asked for an accelerator JAX cannot see: no silent CPU run
        raise ValueError(str(err)) from None
    if config.resume:  # refuse a mismatched resume before building anything
        for c in [multi_seed.seed_config(config, s) for s in seeds] if seeds else [config]:
            run_config.check_resume(c, agent_config)
    if args.preset in paper.RL_PRESETS:
        print(paper.describe_task_values(config, agent_config), flush=True)
        note = paper.data_provenance_note(config.dataset)
        if note is not None:  # Minari's ids and this project's builds are not D4RL's data
            print(f"note: {note}", flush=True)
    ensure_dataset(config.dataset, args.build_steps)
    if seeds is not None:
        summary = multi_seed.train_seeds(config, agent_config, seeds, args.parallel,
                                         accept_changed_data=args.accept_changed_data)
        for seed, ev in summary["eval"].items():
            print(f"seed {seed}: {ev['metric']} (last, step {ev['last']['gradient_step']}) "
                  f"{evaluation.format_score(ev['last'], ev['metric'])}"
                  f"{evaluation.format_success(ev['last'], '; ')}")
        print(f"mean over {len(seeds)} seeds: {summary['last_mean']:.1f} +- {summary['last_std']:.1f}"
              f" (std); run directories: {summary['run_dir']}/seed_<k>/, summary in seeds.json")
        print(f"wall time: {time.perf_counter() - start:.0f} s")
        return 0
    summary = training.train(config, agent_config, args.parallel,
                             accept_changed_data=args.accept_changed_data)
    ev = summary["eval"]
    if not ev:  # a resumed run that was already at --steps and has no evaluation yet
        print(f"nothing to train: {summary['run_dir']} is at step {summary['steps']} = --steps; "
              "pass a larger --steps to train longer.")
        return 0
    metric = ev["metric"]
    print(json.dumps({"last": {k: ev["last"].get(k) for k in
                               ("gradient_step", metric, evaluation.sem_key(metric),
                                "success_rate", "episodes")},
                      "best": {k: ev["best"].get(k) for k in ("gradient_step", metric)},
                      "running_average": ev["running_average"]}, indent=2))
    print(f"{metric} (last evaluation, step {ev['last']['gradient_step']}, "
          f"{ev['last']['episodes']} episodes): {evaluation.format_score(ev['last'], metric)}"
          f"{evaluation.format_success(ev['last'], '; ')}")
    print(f"run directory: {summary['run_dir']} (config.json, metrics.csv, tensorboard events, "
          f"eval.json, environment.json); checkpoints: {summary['checkpoints']}")
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
