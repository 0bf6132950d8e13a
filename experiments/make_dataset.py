"""Build a Minari dataset the project makes itself, with a progress bar.

Examples::

    python experiments/make_dataset.py pointmaze --maze umaze   # quickstart: cdp/pointmaze/umaze-v0
    python experiments/make_dataset.py pointmaze --maze medium --num-steps 1000000
    python experiments/make_dataset.py random --env-id Hopper-v5 --num-steps 100000
    python experiments/make_dataset.py fetch --task push --num-demos 200   # cdp/fetch/push-v0
    python experiments/make_dataset.py locomotion-train --env hopper --policy-dir runs/hopper
    python experiments/make_dataset.py locomotion --env hopper --kind medium --policy-dir runs/hopper
    python experiments/make_dataset.py locomotion-export --env hopper --policy-dir runs/hopper \
        --out results/behaviour/hopper   # medium.npz, expert.npz, record.npz, policies.json: in git
    python experiments/make_dataset.py locomotion --env hopper --kind expert \
        --policies results/behaviour/hopper   # any kind, from the shipped files
    python experiments/make_dataset.py d4rl --file hopper_medium-v2.hdf5  # cdp/d4rl/hopper-medium-v2

See docs/DATASETS.md for every dataset: recipe, size, build time, differences from D4RL.

Datasets go to ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``); load them with
``cdp_jax.data.minari.load(<dataset id>)``. A build is written to a hidden scratch directory and
moved into place only when complete, so an interrupted build leaves no dataset behind; one killed
outright (``kill -9``, out of memory) leaves its hidden ``.cdp-build-*`` folder, which the next
build removes, saying so.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

# Only JAX-free modules here: --help and a bad value are answered before JAX, gymnasium and
# minari start (the builders are imported once the arguments are valid).
from cdp_jax import cli
from cdp_jax.configs import fields, names


def _add_selection_args(parser: argparse.ArgumentParser) -> None:
    """Which snapshots of a behaviour run are the medium and expert policies."""
    parser.add_argument("--medium-step", type=fields.nonnegative_int, default=None,
                        help="override the medium snapshot")
    parser.add_argument("--expert-step", type=fields.nonnegative_int, default=None,
                        help="override the expert snapshot")
    parser.add_argument("--expert-by", choices=names.EXPERT_BY, default="evaluation",
                        help="the expert: the best-evaluated snapshot (deterministic actions), "
                             "or, of those within 10%% of it, the one that returns most with "
                             "sampled actions, as the dataset's rollouts act (100k steps each, "
                             "cached in the run directory)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="builder", required=True)

    pm = sub.add_parser("pointmaze", help="PointMaze: BFS waypoint PD controller + action noise")
    pm.add_argument("--maze", default="umaze", choices=sorted(names.MAZES))
    pm.add_argument("--num-steps", type=fields.positive_int, default=200_000,
                    help="environment steps to record")
    pm.add_argument("--action-noise", type=fields.nonnegative_float, default=0.5,
                    help="std of Gaussian noise added to the controller's action")
    pm.add_argument("--max-episode-steps", type=fields.positive_int, default=1000,
                    help="cut an episode after this many steps without reaching its goal")
    pm.add_argument("--reward-type", default="sparse", choices=names.MAZE_REWARD_TYPES)
    pm.add_argument("--num-reference-episodes", type=fields.positive_int, default=100,
                    help="evaluation episodes for ref_min_score / ref_max_score")

    rnd = sub.add_parser("random", help="uniform random actions in any gymnasium env")
    rnd.add_argument("--env-id", required=True, help="gymnasium id, e.g. Hopper-v5")
    rnd.add_argument("--num-steps", type=fields.positive_int, default=100_000)
    rnd.add_argument("--max-episode-steps", type=fields.positive_int, default=None)

    fe = sub.add_parser("fetch", help="Fetch Push / PickAndPlace: scripted waypoint expert demos")
    fe.add_argument("--task", default="pickandplace", choices=sorted(names.FETCH_TASKS))
    fe.add_argument("--num-demos", type=fields.positive_int, default=200,
                    help="episodes written (50 steps each)")
    fe.add_argument("--action-noise", type=fields.nonnegative_float, default=0.1,
                    help="std of Gaussian noise on the commanded gripper motion")
    fe.add_argument("--keep-failures", action="store_true",
                    help="also write unsuccessful episodes (default: successful ones only)")
    fe.add_argument("--num-reference-episodes", type=fields.positive_int, default=50,
                    help="evaluation episodes for ref_min_score / ref_max_score")

    lt = sub.add_parser("locomotion-train",
                        help="train the SAC behaviour policies of a locomotion env (D4RL recipe)")
    lt.add_argument("--env", required=True, choices=sorted(names.LOCOMOTION_ENVS))
    lt.add_argument("--policy-dir", required=True, help="output directory, e.g. runs/behaviour/hopper")
    lt.add_argument("--num-steps", "--steps", type=fields.positive_int, default=1_000_000,
                    help="SAC env steps")
    lt.add_argument("--eval-every", type=fields.positive_int, default=10_000)
    lt.add_argument("--eval-episodes", type=fields.positive_int, default=10)
    lt.add_argument("--sac", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="SACConfig overrides, e.g. num_envs=4 batch_size=256")
    lt.add_argument("--resume", action="store_true",
                    help="continue the run in --policy-dir up to --num-steps")

    loc = sub.add_parser("locomotion", help="medium / medium-replay / expert / medium-expert "
                         "from trained behaviour policies (D4RL recipe)")
    loc.add_argument("--env", required=True, choices=sorted(names.LOCOMOTION_ENVS))
    loc.add_argument("--kind", required=True, choices=names.LOCOMOTION_KINDS)
    loc.add_argument("--policy-dir", "--policies", dest="policy_dir", required=True,
                     help="a locomotion-train directory, a dataset's behaviour_policy/, or a "
                          "locomotion-export folder (e.g. results/behaviour/hopper)")
    loc.add_argument("--num-steps", "--steps", type=fields.positive_int, default=None,
                     help="steps per policy (default 1000000; medium-replay: all of the buffer)")
    _add_selection_args(loc)
    loc.add_argument("--num-envs", type=fields.positive_int, default=10,
                     help="vector envs for the rollouts")
    loc.add_argument("--reference", default=None, metavar="JSON",
                     help="expert and reference scores of the full run whose start --policy-dir "
                          "holds (medium / medium-replay), e.g. results/behaviour/hopper.json")

    ex = sub.add_parser("locomotion-export",
                        help="write the medium and expert snapshots of a locomotion-train run as "
                             "npz with the reference scores (a folder small enough for git)")
    ex.add_argument("--env", required=True, choices=sorted(names.LOCOMOTION_ENVS))
    ex.add_argument("--policy-dir", required=True,
                    help="a locomotion-train directory or a dataset's behaviour_policy/")
    ex.add_argument("--out", required=True, help="the folder, e.g. results/behaviour/hopper")
    ex.add_argument("--no-record", dest="record", action="store_false",
                    help="leave out the training record up to the medium snapshot (record.npz, "
                         "what medium-replay needs; shipped by default when --policy-dir has "
                         "transitions.h5)")
    _add_selection_args(ex)

    d4 = sub.add_parser("d4rl", help="import an original D4RL HDF5 file")
    d4.add_argument("--file", required=True, help="the D4RL .hdf5 file")
    d4.add_argument("--task", default=None, help="D4RL task name; default from the file name")

    for p in (pm, rnd, fe, lt, loc, d4):
        p.add_argument("--seed", type=fields.nonnegative_int, default=0)
        p.add_argument("--dataset-id", default=None,
                       help="Minari id (namespace/name-v<version>); default depends on the builder")
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.builder == "locomotion-train":  # SAC overrides, refused before JAX starts
        from cdp_jax.configs import sac  # noqa: PLC0415

        try:
            args.sac_config = fields.apply_overrides(sac.SACConfig(), args.sac).validate()
        except ValueError as err:
            parser.error(f"argument --sac: {err}")
    return args


def _candidate_line(step: int, row: dict, done: int, total: int) -> None:
    """A progress line per candidate expert of ``--expert-by sampled`` (on stderr)."""
    tqdm.write(f"[{done}/{total}] snapshot {step}: sampled-action return "
               f"{row['return_mean']:.1f} (s.e. {row['return_se']:.1f}), "
               f"{row['length_mean']:.0f} steps per episode", file=sys.stderr)


def _main_locomotion(args) -> dict:
    """The locomotion-train / locomotion / locomotion-export / d4rl subcommands; returns the
    summary."""
    from cdp_jax.data import d4rl  # noqa: PLC0415
    from cdp_jax.data.builders import locomotion  # noqa: PLC0415

    if args.builder == "locomotion-export":
        bars = []  # the record's replay check gets a bar once it starts, after the selection

        def replayed(steps: int) -> None:
            if not bars:
                bars.append(tqdm(unit="step", desc="checking the shipped record"))
            bars[0].update(steps)

        try:
            return locomotion.export_policies(args.env, args.policy_dir, args.out,
                                              medium_step=args.medium_step,
                                              expert_step=args.expert_step,
                                              expert_by=args.expert_by,
                                              on_sampled=_candidate_line, record=args.record,
                                              progress=replayed)
        finally:
            for bar in bars:
                bar.close()
    if args.builder == "locomotion-train":
        config = args.sac_config
        with tqdm(total=args.num_steps, unit="step", desc="SAC") as bar:
            summary = locomotion.train_behaviour(
                args.env, args.policy_dir, args.num_steps, args.seed, config=config,
                eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                progress=bar.update, log=lambda r: bar.write(json.dumps(r)), resume=args.resume)
        return {**summary, "evaluations": summary["evaluations"][-1:]}
    if args.builder == "locomotion":
        steps = args.num_steps or (None if args.kind == "medium-replay" else 1_000_000)
        total = None if steps is None else steps * (2 if args.kind == "medium-expert" else 1)
        with tqdm(total=total, unit="step", desc=f"{args.env} {args.kind}") as bar:
            return locomotion.build(
                args.env, args.kind, args.policy_dir, steps, args.seed, args.dataset_id,
                medium_step=args.medium_step, expert_step=args.expert_step,
                expert_by=args.expert_by, on_sampled=_candidate_line, num_envs=args.num_envs,
                overwrite=args.overwrite,
                progress=bar.update,
                reference=(None if args.reference is None
                           else locomotion.load_reference(args.reference, args.env)))
    return d4rl.import_file(args.file, args.task, args.dataset_id, overwrite=args.overwrite)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.builder in ("locomotion-train", "locomotion", "locomotion-export", "d4rl"):
        print(json.dumps(_main_locomotion(args), indent=2))
        return 0
    from cdp_jax.data.builders import fetch, pointmaze, random_policy  # noqa: PLC0415

    fetch_build = args.builder == "fetch"
    with tqdm(total=args.num_demos if fetch_build else args.num_steps,
              unit="episode" if fetch_build else "step", desc=f"{args.builder} dataset") as bar:
        if fetch_build:
            summary = fetch.build(
                args.task, args.num_demos, args.seed, args.dataset_id,
                action_noise=args.action_noise, keep_failures=args.keep_failures,
                num_reference_episodes=args.num_reference_episodes, overwrite=args.overwrite,
                progress=bar.update, stage=bar.set_postfix_str,
            )
        elif args.builder == "pointmaze":
            summary = pointmaze.build(
                args.maze, args.num_steps, args.seed, args.dataset_id,
                action_noise=args.action_noise, max_episode_steps=args.max_episode_steps,
                reward_type=args.reward_type, num_reference_episodes=args.num_reference_episodes,
                overwrite=args.overwrite, progress=bar.update, stage=bar.set_postfix_str,
            )
        else:
            summary = random_policy.build(
                args.env_id, args.num_steps, args.seed, args.dataset_id,
                max_episode_steps=args.max_episode_steps, overwrite=args.overwrite,
                progress=bar.update,
            )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"dataset:  {summary['dataset_id']}")
        print(f"path:     {summary['path']}")
        print(f"size:     {summary['size_bytes'] / 2**20:.1f} MiB")
        print(f"episodes: {summary['num_episodes']}")
        print(f"steps:    {summary['num_steps']}")
        for key in ("success_rate", "ref_min_score", "ref_max_score"):
            if key in summary:
                print(f"{key}: {summary[key]:.4g}")
        print(f"seconds:  {summary['seconds']:.1f} wall, {summary['cpu_seconds']:.1f} CPU")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
