"""The official CDP pipeline as configurations: the ``paper`` (offline RL) and ``paper-il``
(imitation learning) presets and the per-task table of the official code.

Every official behaviour is a named config field (docs/PARITY.md lists each, its value here and
under the defaults, and why they differ); these presets switch all of them on, quirks included:

* offline RL (EDP + Diffusion-QL critic + contraction, ``scripts/cdp_rl.py`` of the official code):
  :data:`PAPER_RL` agent fields, :data:`PAPER_RL_TRAIN` run fields, and per task
  :data:`TASKS` (``eta``, softmax temperature over the critic at evaluation, episode cap, reward
  normalisation, TD samples);
* imitation learning (DBC + contraction, ``scripts/cdp_il_lowdim.py``): :data:`PAPER_IL` and
  :data:`PAPER_IL_TRAIN`.

:func:`task_for_dataset` finds a task's row from any id a dataset may have: Minari's
``mujoco/hopper/medium-v0`` and ``D4RL/antmaze/medium-play-v1`` style ids, the D4RL names
(``hopper-medium-replay-v2``) and the ids :func:`cdp_jax.data.d4rl.import_file` writes
(``cdp/d4rl/hopper-medium-replay-v2``), and this project's locally built datasets
(``cdp/hopper/medium-replay-v0``: D4RL's recipe, see docs/DATASETS.md). PointMaze has no row in
the official code; :data:`PROJECT_ROWS` gives the values cdp_jax chose for it (from the nearest
official analogue, AntMaze medium-play), labelled as such.
"""

from __future__ import annotations

import dataclasses
import re

from cdp_jax.configs.contraction import ContractionConfig
from cdp_jax.data import dataset_ids

# The official penalty: mean((J_sym + 0.1 I)^2) over the d^2 entries, the exact Jacobian of the
# raw x0 network w.r.t. the noisy action, averaged over all in-window samples, weight 0.1. RL: the
# lowest 10% of noise levels (t < 5 of 50), so a Binomial(B, 0.1) number of samples. Shapes stay
# static with room for a quarter of the batch and a mask: at B = 256 that is 64 slots for 25.6
# samples on average; more than 64 has probability 1.5e-12 per step (the binomial tail; 3e-7 over
# a 200k-step run), and would be logged as contraction/num_dropped > 0. Every slot costs
# a Jacobian, so this is 4x cheaper than masking the whole batch (num_penalised=1.0, what
# PAPER_IL uses, where every level is in the window).
PAPER_PENALTY = ContractionConfig(
    weight=0.1, penalty="frobenius", frobenius_lambda=0.1, frobenius_scale="dim_squared",
    frobenius_estimator="exact", target="network", window=0.1, num_penalised=0.25)

PAPER_RL = {
    "actor_network": "mlp", "actor_hidden_dim": 256, "actor_depth": 3, "time_dim": 64,
    "time_embedding": "positional_integer_t", "param_init": "torch",
    "schedule": "cosine", "schedule_discretization": "cleandiffuser", "diffusion_steps": 50,
    "prediction": "x0", "action_approx": True, "edp_draw": "separate", "edp_clip": False,
    "sampler": "dpm_solver_pp_2m", "sampler_steps": 15, "sampler_spacing": "cleandiffuser",
    "critic_hidden_dim": 256, "critic_depth": 3, "critic_layer_norm_eps": 1e-5,
    "discount": 0.99, "tau": 0.995, "target_every": 5, "td_target_order": "max_then_min",
    "actor_lr": 3e-4, "critic_lr": 3e-4, "weight_decay": 0.01, "max_grad_norm": None,
    "ema_decay": 0.995, "ema_every": 5, "ema_start": 1000, "ema_warmup": "initial",
    "contraction": PAPER_PENALTY, "num_candidates": 100, "noise_temperature": 0.5,
}
# Evaluation every 20k steps on 10 envs x 5 episodes; 200k gradient steps (the official sweep
# scripts; the config file's default is 250k); low-data fractions by transitions.
PAPER_RL_TRAIN = {
    "steps": 200_000, "batch_size": 256, "updates_per_call": 1000, "eval_every": 20_000,
    "checkpoint_every": 20_000, "eval_episodes": 50, "eval_envs": 10, "fraction_unit": "transitions",
    "normalize_obs": True,
}

PAPER_IL = {
    "actor_network": "pearce", "hidden_dim": 512, "time_dim": 128,
    "time_embedding": "positional_integer_t", "param_init": "torch",
    "obs_horizon": 2, "action_horizon": 1, "n_action": 1,
    "schedule": "cosine", "schedule_discretization": "cleandiffuser", "diffusion_steps": 50,
    "prediction": "x0", "sampler": "dpm_solver_pp_2m", "sampler_steps": 50,
    "sampler_spacing": "cleandiffuser", "sampler_clip_x0": False, "noise_temperature": 1.0,
    "lr": 1e-3, "weight_decay": 0.01, "lr_decay_steps": 0, "max_grad_norm": None,
    "ema_decay": 0.995, "ema_start": 0,
    "contraction": dataclasses.replace(PAPER_PENALTY, window=1.0, num_penalised=1.0),
}
PAPER_IL_TRAIN = {
    "steps": 200_000, "batch_size": 512, "updates_per_call": 1000, "eval_every": 20_000,
    "checkpoint_every": 20_000, "eval_episodes": 10, "eval_envs": 5, "fraction_unit": "transitions",
    "obs_normalizer": "minmax",
}


# The fast presets ("paper-fast", "paper-il-fast"): the same pipelines and the same objective, the
# mean over the penalised samples of mean((J_sym + 0.1 I)^2), estimated without any Jacobian:
# forward-mode probe pairs (cdp_jax.contraction, estimator "jvp_pairs": two JVPs through one
# linearisation per sample, no transposed product) on a random subsample of the in-window samples.
# Every in-window sample is equally likely to be taken, so the subsample's mean is unbiased for the
# mean over all of them, and the probe pair for each sample's penalty: for the value and for its
# parameter gradient (tests/test_fast_penalty.py). Sizes from the variance-versus-cost table of
# docs/MATH.md ("The fast penalty"): RL 16 of the ~26 in-window samples of a batch of 256, IL 4
# of the 512; at both, the noise the estimate adds to the actor's gradient is a few percent of
# the noise of the denoising loss's own draw.
FAST_ESTIMATOR, FAST_RL_SAMPLES, FAST_IL_SAMPLES, FAST_PROBES = "jvp_pairs", 16, 4, 1
PAPER_FAST_PENALTY = dataclasses.replace(
    PAPER_PENALTY, frobenius_estimator=FAST_ESTIMATOR, num_penalised=FAST_RL_SAMPLES,
    num_probes=FAST_PROBES)
PAPER_RL_FAST = {**PAPER_RL, "contraction": PAPER_FAST_PENALTY}
PAPER_IL_FAST = {**PAPER_IL, "contraction": dataclasses.replace(
    PAPER_IL["contraction"], frobenius_estimator=FAST_ESTIMATOR, num_penalised=FAST_IL_SAMPLES,
    num_probes=FAST_PROBES)}
# Presets that take their per-task values from the dataset id (the offline-RL pipeline).
RL_PRESETS = ("paper", "paper-fast")


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """One task's settings: ``eta`` (Q-loss weight), ``candidate_temperature`` (softmax over the
    target critic's min-Q at evaluation), ``max_episode_steps``, ``reward_normalization``,
    ``td_samples`` (and with it ``td_target_order``), and where the numbers come from."""

    eta: float
    candidate_temperature: float
    max_episode_steps: int
    reward_normalization: str
    td_samples: int
    source: str = "official"


def _domain_row(domain: str, eta: float, temperature: float) -> TaskRow:
    if domain == "mujoco":
        return TaskRow(eta, temperature, 1000, "returns_range", 1)
    if domain == "antmaze":
        return TaskRow(eta, temperature, 1000, "minus_one", 10)
    return TaskRow(eta, temperature, 280, "none", 1)  # kitchen


# The official task configs (configs/cdp-rl/task/*.yaml): eta, weight_temperature.
_OFFICIAL = {
    "halfcheetah-medium": ("mujoco", 1.0, 50.0),
    "halfcheetah-medium-replay": ("mujoco", 1.0, 150.0),
    "halfcheetah-medium-expert": ("mujoco", 1.0, 50.0),
    "hopper-medium": ("mujoco", 1.0, 300.0),
    "hopper-medium-replay": ("mujoco", 1.0, 300.0),
    "hopper-medium-expert": ("mujoco", 1.0, 8.0),
    "walker2d-medium": ("mujoco", 1.0, 300.0),
    "walker2d-medium-replay": ("mujoco", 1.0, 100.0),
    "walker2d-medium-expert": ("mujoco", 1.0, 300.0),
    "antmaze-medium-play": ("antmaze", 2.0, 10.0),
    "antmaze-medium-diverse": ("antmaze", 3.0, 5.0),
    "antmaze-large-play": ("antmaze", 4.5, 5.0),
    "antmaze-large-diverse": ("antmaze", 3.5, 10.0),
    "kitchen-complete": ("kitchen", 0.005, 5.0),
    "kitchen-mixed": ("kitchen", 0.005, 5.0),
    "kitchen-partial": ("kitchen", 0.005, 5.0),
}
TASKS = {name: _domain_row(*spec) for name, spec in _OFFICIAL.items()}

# Not in the official code: cdp_jax's PointMaze rows. PointMaze is goal reaching with a sparse
# reward, like AntMaze; eta 2, candidate temperature 10 and the reward r - 1 are
# antmaze-medium-play's. One TD sample, as every non-AntMaze row, not AntMaze's max over 10: with
# 10 the TD target's 15-step sampler runs on 10x the batch: 12.9 instead of 2.5 GFLOP of matmuls
# per update (counted on the jaxpr, PointMaze shapes, batch 256), a 5x dearer step.
# The episode cap is the evaluation env's own time limit (PointMaze_<Maze>-v3: 300, 600, 800
# steps), the one the dataset's reference scores were measured under: a shorter cap would
# normalise a truncated return by a full-length one.
POINTMAZE_TIME_LIMITS = {"umaze": 300, "medium": 600, "large": 800}
PROJECT_ROWS = {
    f"pointmaze-{maze}": dataclasses.replace(
        TASKS["antmaze-medium-play"], max_episode_steps=limit, td_samples=1,
        source="cdp_jax (eta, candidate temperature and reward from the nearest official "
               "analogue, antmaze-medium-play; 1 TD sample)")
    for maze, limit in POINTMAZE_TIME_LIMITS.items()
}

_LOCOMOTION = r"(halfcheetah|hopper|walker2d)"
_KINDS = r"(medium|medium-replay|medium-expert)"
_ANTMAZE = r"(medium-play|medium-diverse|large-play|large-diverse)"
_KITCHEN = r"(complete|mixed|partial)"
# (pattern, function of the match -> task name), tried in order. Versions are not checked.
_ID_PATTERNS = [
    (rf"(?:mujoco|cdp)/{_LOCOMOTION}/{_KINDS}-v\d+", lambda m: f"{m[1]}-{m[2]}"),
    (rf"(?:cdp/d4rl/)?{_LOCOMOTION}-{_KINDS}-v\d+", lambda m: f"{m[1]}-{m[2]}"),
    (rf"D4RL/antmaze/{_ANTMAZE}-v\d+", lambda m: f"antmaze-{m[1]}"),
    (rf"(?:cdp/d4rl/)?antmaze-{_ANTMAZE}-v\d+", lambda m: f"antmaze-{m[1]}"),
    (rf"D4RL/kitchen/{_KITCHEN}-v\d+", lambda m: f"kitchen-{m[1]}"),
    (rf"(?:cdp/d4rl/)?kitchen-{_KITCHEN}-v\d+", lambda m: f"kitchen-{m[1]}"),
    (r"(?:cdp|D4RL)/pointmaze/(umaze|medium|large)-v\d+", lambda m: f"pointmaze-{m[1]}"),
]
ID_FORMS = ("mujoco/<env>/<kind>-vN", "cdp/<env>/<kind>-vN", "<env>-<kind>-vN",
            "cdp/d4rl/<env>-<kind>-vN", "D4RL/antmaze/<maze>-vN", "D4RL/kitchen/<task>-vN",
            "cdp/pointmaze/<maze>-vN")


def task_for_dataset(dataset_id: str) -> str | None:
    """The task name (a key of :data:`TASKS` or :data:`PROJECT_ROWS`) for a dataset id, or None."""
    for pattern, name in _ID_PATTERNS:
        match = re.fullmatch(pattern, dataset_id)
        if match:
            return name(match)
    return None


def task_row(dataset_id: str) -> tuple[str, TaskRow] | None:
    """``(task, row)`` for a dataset id, or None when the id has no row."""
    task = task_for_dataset(dataset_id)
    if task is None:
        return None
    return task, TASKS.get(task) or PROJECT_ROWS[task]


def unknown_dataset_message(dataset_id: str) -> str:
    """The error for ``--preset paper`` on a dataset with no per-task row."""
    return (f"--preset paper has no per-task row for dataset {dataset_id!r}. Known tasks: "
            f"{sorted(TASKS)} (official) and {sorted(PROJECT_ROWS)} (cdp_jax), under ids of the "
            f"forms {', '.join(ID_FORMS)}. For another dataset give the per-task values "
            f"explicitly: --set eta=E --set candidate_temperature=C --set td_samples=N "
            f"--reward-normalization {{none,returns_range,minus_one}} --max-episode-steps M.")


def rl_task_overrides(row: TaskRow) -> tuple[dict, dict]:
    """``(agent overrides, train overrides)`` of a task row."""
    agent = {"eta": row.eta, "candidate_temperature": row.candidate_temperature,
             "td_samples": row.td_samples}
    train = {"max_episode_steps": row.max_episode_steps,
             "reward_normalization": row.reward_normalization}
    return agent, train


def describe_task_values(config, agent_config) -> str:
    """One line for the run's log: the per-task values in use and where they come from."""
    found = task_row(config.dataset)
    values = (f"eta={agent_config.eta:g} candidate_temperature={agent_config.candidate_temperature:g}"
              f" td_samples={agent_config.td_samples} reward_normalization="
              f"{config.reward_normalization} max_episode_steps={config.max_episode_steps}")
    if found is None:
        origin = "given explicitly (no per-task row for this dataset)"
    else:
        task, row = found
        origin = f"task {task}: {row.source}; flags and --set override them"
    return f"paper preset, per-task values: {values} ({origin})"


def data_provenance_note(dataset_id: str) -> str | None:
    """For a ``--preset paper`` run: a note when ``dataset_id`` has a per-task row but does not
    hold D4RL's data (Minari's ids, this project's builds; :mod:`cdp_jax.data.dataset_ids`), saying
    that the row is only the nearest official analogue and that scores on it are not comparable
    with the paper's. None for D4RL's own files imported (``cdp/d4rl/...``) and for ids with no
    row or of unknown origin."""
    found = task_row(dataset_id)
    provenance = dataset_ids.d4rl_provenance(dataset_id)
    if found is None or provenance is None:
        return None
    task, _ = found
    row = ("the nearest official analogue" if task in TASKS
           else "cdp_jax's own (this task is not in the paper)")
    return (f"{dataset_id} is not the paper's data ({provenance}). Its per-task row, {task}, is "
            f"{row}: scores on it are not comparable with the paper's. The paper's own files: "
            "docs/DATASETS.md, \"Getting the paper's own data\".")
