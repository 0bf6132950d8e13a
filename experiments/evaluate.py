"""Evaluate a trained run's checkpoint in its environment, optionally under another protocol.

    python experiments/evaluate.py runs/quickstart
    python experiments/evaluate.py runs/quickstart --checkpoint best --episodes 50 --envs 10
    python experiments/evaluate.py runs/quickstart --candidates 100 --noise-temperature 0.5
    python experiments/evaluate.py runs/quickstart --set sampler=ddim --set sampler_steps=10
    python experiments/evaluate.py runs/quickstart --reset-seeds 0-49 --tag starts0

Writes ``<run>/eval_<checkpoint step>_<tag>.json`` with the protocol next to every number and
prints the normalised score (the return's mean where the dataset has no reference scores) ± its
standard error over the episodes, and the success rate where the environment reports success. An
existing result is never replaced silently: give each protocol its own ``--tag`` (e.g. ``--tag
ddim10``), or pass ``--overwrite``.

Start states: episode ``k`` resets its environment with seed ``100000 SEED + k``, where SEED is
``--seed`` (default: the run's own seed, so by default the episodes start where the run's own
evaluations started). ``--reset-seeds`` gives the reset seed of every episode instead (and so the
number of episodes): two runs evaluated with the same ``--reset-seeds`` play from the same start
states. The record lists each episode's reset seed (``reset_seeds``).

When the run's dataset holds other content than it was trained on (rebuilt under the same id),
a ``warning:`` line says so: the policy is evaluated as trained, but normalised scores use the
new dataset's reference scores.

Errors in the input (a missing run, a bad ``--checkpoint``, a damaged checkpoint, an invalid
value) are printed as one ``error: ...`` line with exit status 2. An interrupt (Ctrl-C, SIGTERM)
is one line, exit status 130; nothing is written then (the result file appears only whole).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

# Only JAX-free modules here: --help, a bad value, a missing run and a bad --set are answered
# before JAX starts (main() imports the rest).
from cdp_jax import cli
from cdp_jax.configs import fields, names
from cdp_jax.configs import train as train_config


def checkpoint_arg(text: str):
    """``--checkpoint``: ``latest`` (``None``), ``best`` or a gradient step >= 0."""
    if text in ("latest", "best"):
        return None if text == "latest" else text
    try:
        step = int(text)
    except ValueError:
        step = -1
    if step < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected 'latest', 'best' or "
                                         "a gradient step (an integer >= 0)")
    return step


def reset_seeds_arg(text: str) -> tuple[int, ...]:
    """``--reset-seeds``: ``0-49``, ``0,3,5`` or a mix (``0-9,100``): distinct integers >= 0."""
    try:
        return train_config.parse_seeds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected distinct integers >= 0 such as '0-49', '0,3,5' "
            "or '0-9,100'") from None


def describe_seeds(seeds) -> str:
    """``"0-49"`` for a contiguous run of seeds, else ``"0,3,5"``."""
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 1:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory written by experiments/train.py")
    parser.add_argument("--checkpoint", default=None, type=checkpoint_arg,
                        help="'latest', 'best' or a gradient step (default: latest)")
    parser.add_argument("--episodes", type=fields.positive_int, default=None,
                        help="default: the run's")
    parser.add_argument("--envs", type=fields.positive_int, default=None,
                        help="parallel envs; default: the run's")
    parser.add_argument("--vector", choices=names.VECTOR_MODES, default=None)
    parser.add_argument("--candidates", type=fields.positive_int, default=None,
                        help="DQL: critic-resampled candidates per action (official: 100)")
    parser.add_argument("--candidate-temperature", type=fields.finite_float, default=None)
    parser.add_argument("--noise-temperature", type=fields.finite_float, default=None,
                        help="initial-noise scale of the sampler (official: 0.5)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an agent field used by act (sampler, sampler_steps, ...)")
    parser.add_argument("--seed", type=fields.nonnegative_int, default=None,
                        help="evaluation seed: the policy's sampling key and, without "
                             "--reset-seeds, the start states (episode k resets with seed "
                             "100000 SEED + k); default: the run's seed, whose start states its "
                             "own evaluations used")
    parser.add_argument("--reset-seeds", type=reset_seeds_arg, default=None, metavar="SEEDS",
                        help="the reset seed of every episode, e.g. 0-49 or 0,3,5 (one episode "
                             "each; --episodes, if given, must match): evaluate two runs on the "
                             "same start states")
    parser.add_argument("--tag", default="eval", help="suffix of the output file name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing result file of the same checkpoint and tag")
    args = parser.parse_args(argv)
    if not args.tag or any(c in args.tag for c in "/\\") or args.tag in (".", ".."):
        parser.error(f"argument --tag: invalid value {args.tag!r}: a plain file-name part")
    if args.reset_seeds is not None:
        if args.episodes not in (None, len(args.reset_seeds)):
            parser.error(f"argument --episodes: {args.episodes} episodes, but --reset-seeds gives "
                         f"{len(args.reset_seeds)} (one episode per reset seed); drop --episodes")
        args.episodes = len(args.reset_seeds)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _, saved_agent = train_config.load_run_config(args.run_dir)  # a clear error if there is none
    overrides = list(args.set)
    for flag, field in (("candidates", "num_candidates"), ("noise_temperature", "noise_temperature"),
                        ("candidate_temperature", "candidate_temperature")):
        if getattr(args, flag) is not None:
            overrides.append(f"{field}={getattr(args, flag)}")
    fields.apply_overrides(saved_agent, overrides).validate()  # refused before JAX starts
    import jax  # noqa: PLC0415

    from cdp_jax import (  # noqa: PLC0415
        checkpoint,
        evaluation,
        interrupts,
        run_config,
        run_directory,
        training,
    )
    from cdp_jax.data import fingerprint, minari  # noqa: PLC0415

    try:
        step = run_config.checkpoint_step(args.run_dir, args.checkpoint)
        out = Path(args.run_dir) / f"eval_{step}_{args.tag}.json"
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists (an earlier evaluation of this checkpoint with "
                                  f"tag {args.tag!r}); pass another --tag, or --overwrite to "
                                  "replace it.")
        config, agent_config, state, norm, meta = run_config.load_policy(args.run_dir, step)
    except checkpoint.CheckpointError as err:
        raise checkpoint.CheckpointError(f"{err} Choose one with --checkpoint STEP.") from None
    if (recorded := run_directory.recorded_dataset(args.run_dir)) is not None:
        now = fingerprint.changed(recorded, lambda: minari.load(
            config.dataset, fraction=config.episode_fraction, num_episodes=config.num_episodes,
            seed=config.seed))  # as the run loaded it
        if now is not None:
            print(f"warning: the dataset {config.dataset} changed since {args.run_dir} was "
                  f"trained on it (recorded: {run_directory.describe_dataset(recorded)}; now: "
                  f"{run_directory.describe_dataset(now)}): the policy is evaluated as trained, "
                  "but normalised scores use the new dataset's reference scores.",
                  file=sys.stderr, flush=True)
    agent_config = fields.apply_overrides(agent_config, overrides).validate()
    state = state.replace(config=agent_config)
    run_overrides = {k: v for k, v in (("eval_episodes", args.episodes), ("eval_envs", args.envs),
                                       ("eval_vector", args.vector), ("seed", args.seed))
                     if v is not None}
    config = dataclasses.replace(config, **run_overrides).validate()

    entry = None
    try:
        data = minari.load(config.dataset, num_episodes=1)  # metadata: env spec, ref. scores
        envs = training.make_eval_envs(data, config)
        agent = training.get_agent(config.agent)
        try:
            result = training.run_evaluation(jax.jit(agent.act), config.agent, state, data, norm,
                                             envs, config, meta["step"], args.reset_seeds)
        finally:
            envs.close()
        protocol = training.eval_protocol(config.agent, agent_config, config)
        record = evaluation.EvalRecord(out, average_last=1)
        with interrupts.deferred():  # the result file is written whole
            entry = record.add(meta["step"], result, protocol)
    except KeyboardInterrupt as err:
        what = (f"interrupted while evaluating {args.run_dir} (checkpoint step {meta['step']}, "
                f"{config.eval_episodes} episodes)")
        if entry is not None:  # it arrived while the result was written, which went first
            raise interrupts.Interrupted(f"{what}, once done: the result is in {out}",
                                         signum=interrupts.signal_of(err)) from None
        kept = "the earlier one is unchanged" if out.exists() else "not written"
        raise interrupts.Interrupted(
            f"{what}: nothing was written ({out}: {kept})", signum=interrupts.signal_of(err),
            then=interrupts.Then("run it again with")) from None
    key = "normalized_score" if "normalized_score" in entry else "return_mean"
    print(json.dumps({k: v for k, v in entry.items() if k not in evaluation.PER_EPISODE},
                     indent=2))
    print(f"{key}: {evaluation.format_score(entry, key)}"
          f"{evaluation.format_success(entry, '  ')}  "
          f"(step {meta['step']}, {entry['episodes']} episodes from reset seeds "
          f"{describe_seeds(entry['reset_seeds'])}, {protocol['candidates']} candidates) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
