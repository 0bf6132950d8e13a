"""Which dataset ids exist: the Minari server's (checked by hand, with where and when) and the ones
this project builds (``experiments/make_dataset.py``).

This machine-independent list is what the "dataset not found" errors, the ``--preset paper``
provenance note and the documentation test (every id the README, ``docs/`` and the scripts'
``--help`` show is here or built here) read. It holds the Minari families the project names or maps
to a paper task row, not the whole server: ``minari list remote`` shows what the server holds now.

How each family was checked (:data:`CHECKED_ON`; no Minari server query was possible from the
development machine, so from Minari's published pages and its generation scripts):

* ``mujoco/{halfcheetah,hopper,walker2d}/{simple,medium,expert}-v0``: the generation script
  ``scripts/mujoco/create_dataset.py`` of github.com/Farama-Foundation/minari-dataset-generation-scripts
  (its ``ENV_IDS``: these three proficiencies for these envs, ``DATASET_VERSION = "v0"``); the
  ``mujoco`` namespace on huggingface.co/datasets/farama-minari/mujoco; Minari issue 325 (March
  2026), which benchmarks exactly these nine locomotion ids. There is no ``medium-replay`` or
  ``medium-expert`` id in this namespace.
* ``D4RL/pointmaze/{open,umaze,medium,large}[-dense]-v2``: minari.farama.org/datasets/D4RL/pointmaze/umaze-v2
  (``minari download D4RL/pointmaze/umaze-v2``) and the folder listing
  huggingface.co/datasets/farama-minari/D4RL/tree/main/pointmaze (the eight ids).
* ``D4RL/antmaze/{umaze,umaze-diverse,medium-play,medium-diverse,large-play,large-diverse}-v1``:
  ``minari list remote`` as printed on minari.farama.org/content/basic_usage (``large-diverse-v1``,
  ``large-play-v1``, ``medium-diverse-v1``) and the dataset index of Minari's documentation (the
  six AntMaze datasets).
* ``D4RL/kitchen/{complete,mixed,partial}-v2``: minari.farama.org/datasets/D4RL/kitchen/mixed-v2
  (``minari download D4RL/kitchen/mixed-v2``) and the same index (Complete, Mixed, Partial).
"""

from __future__ import annotations

import dataclasses
import difflib
import re

CHECKED_ON = "2026-12-05"


@dataclasses.dataclass(frozen=True)
class RemoteFamily:
    """Minari ids of one family, where they were checked (:data:`CHECKED_ON`) and what their data
    is, measured against the D4RL files the paper used."""

    ids: tuple[str, ...]
    checked_at: tuple[str, ...]
    data: str


_LOCOMOTION = ("halfcheetah", "hopper", "walker2d")
_MAZES = ("open", "umaze", "medium", "large")

REMOTE_FAMILIES = (
    RemoteFamily(
        ids=tuple(f"mujoco/{env}/{level}-v0" for env in _LOCOMOTION
                  for level in ("simple", "medium", "expert")),
        checked_at=(
            "github.com/Farama-Foundation/minari-dataset-generation-scripts "
            "scripts/mujoco/create_dataset.py (ENV_IDS, DATASET_VERSION)",
            "huggingface.co/datasets/farama-minari/mujoco",
            "github.com/Farama-Foundation/Minari/issues/325"),
        data=("Minari's own data, not D4RL's: regenerated on Gymnasium MuJoCo v5 envs (mujoco 3) "
              "by Stable-Baselines3 policies Minari trained (reference scores, where recorded, "
              "are not D4RL's); no medium-replay or medium-expert")),
    RemoteFamily(
        ids=tuple(f"D4RL/pointmaze/{maze}{dense}-v2" for maze in _MAZES for dense in ("", "-dense")),
        checked_at=("minari.farama.org/datasets/D4RL/pointmaze/umaze-v2",
                    "huggingface.co/datasets/farama-minari/D4RL/tree/main/pointmaze"),
        data=("regenerated with D4RL maze2d's recipe (Q-iteration waypoints, PD controller, "
              "action noise) on gymnasium-robotics PointMaze_*-v3, not D4RL's maze2d files; "
              "dict observations")),
    RemoteFamily(
        ids=tuple(f"D4RL/antmaze/{name}-v1" for name in (
            "umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play",
            "large-diverse")),
        checked_at=("minari.farama.org/content/basic_usage (minari list remote)",
                    "minari.farama.org dataset index (D4RL / Ant Maze)"),
        data=("regenerated on gymnasium-robotics AntMaze_*-v4 with a new goal-reaching policy, "
              "not D4RL's antmaze files; dict observations; IQL with D4RL's settings does not "
              "reach its D4RL AntMaze scores on them, Minari issue 296")),
    RemoteFamily(
        ids=tuple(f"D4RL/kitchen/{task}-v2" for task in ("complete", "mixed", "partial")),
        checked_at=("minari.farama.org/datasets/D4RL/kitchen/mixed-v2",
                    "minari.farama.org dataset index (D4RL / Kitchen)"),
        data=("D4RL's kitchen demonstrations replayed in gymnasium-robotics FrankaKitchen-v1 "
              "(mujoco 3), not D4RL's kitchen files; dict observations")),
)
REMOTE_IDS: dict[str, RemoteFamily] = {i: family for family in REMOTE_FAMILIES for i in family.ids}

_MAKE = "python experiments/make_dataset.py"
# Names the builders accept (cdp_jax/data/builders: pointmaze.MAZES, fetch.TASKS, locomotion.ENVS
# / KINDS; tests/test_dataset_ids.py holds these to them). Kept here as strings so that this module
# imports nothing heavier than ``re``.
POINTMAZE_MAZES = _MAZES
FETCH_TASKS = ("push", "pickandplace")
LOCOMOTION_ENVS = _LOCOMOTION
LOCOMOTION_KINDS = ("medium", "medium-replay", "expert", "medium-expert")


def _with_id(command: str, dataset_id: str, default_id: str) -> str:
    return command if dataset_id == default_id else f"{command} --dataset-id {dataset_id}"


def local_build_command(dataset_id: str) -> str | None:
    """The command that builds ``dataset_id`` here, or None when no builder makes that id.

    Local ids are ``cdp/...``: ``cdp/pointmaze/<maze>[-dense]-vN``, ``cdp/fetch/<task>-vN``,
    ``cdp/<env>/<kind>-vN`` (D4RL's recipe), ``cdp/<env>/random-vN`` and ``cdp/d4rl/<task>``
    (an original D4RL file imported). A version other than the builder's default needs
    ``--dataset-id``, which the command includes.
    """
    maze = "|".join(POINTMAZE_MAZES)
    if m := re.fullmatch(rf"cdp/pointmaze/({maze})(-dense)?-v\d+", dataset_id):
        command = f"{_MAKE} pointmaze --maze {m[1]}" + (" --reward-type dense" if m[2] else "")
        return _with_id(command, dataset_id, f"cdp/pointmaze/{m[1]}{m[2] or ''}-v0")
    if m := re.fullmatch(rf"cdp/fetch/({'|'.join(FETCH_TASKS)})-v\d+", dataset_id):
        return _with_id(f"{_MAKE} fetch --task {m[1]}", dataset_id, f"cdp/fetch/{m[1]}-v0")
    envs, kinds = "|".join(LOCOMOTION_ENVS), "|".join(LOCOMOTION_KINDS)
    if m := re.fullmatch(rf"cdp/({envs})/({kinds})-v\d+", dataset_id):
        env, kind = m[1], m[2]
        build = _with_id(f"{_MAKE} locomotion --env {env} --kind {kind} --policy-dir "
                         f"runs/behaviour/{env}", dataset_id, f"cdp/{env}/{kind}-v0")
        return (f"{_MAKE} locomotion-train --env {env} --policy-dir runs/behaviour/{env}` "
                f"(once, about 1M SAC steps), then `{build}")
    if m := re.fullmatch(r"cdp/d4rl/([a-z0-9-]+-v\d+)", dataset_id):
        return f"{_MAKE} d4rl --file <the D4RL .hdf5 file of {m[1]}> --task {m[1]}"
    if m := re.fullmatch(r"cdp/([a-z0-9_]+)/random-v\d+", dataset_id):
        return _with_id(f"{_MAKE} random --env-id <the gymnasium id of {m[1]}, e.g. Hopper-v5>",
                        dataset_id, f"cdp/{m[1]}/random-v0")
    return None


def remote_family(dataset_id: str) -> RemoteFamily | None:
    """The checked Minari family holding ``dataset_id``, or None when it is not in the list."""
    return REMOTE_IDS.get(dataset_id)


def known(dataset_id: str) -> bool:
    """True when ``dataset_id`` exists on Minari's server (as checked) or a builder makes it."""
    return dataset_id in REMOTE_IDS or local_build_command(dataset_id) is not None


def similar_ids(dataset_id: str, n: int = 3) -> list[str]:
    """Known ids (remote, and the local builders' defaults) that look like ``dataset_id``."""
    local = ([f"cdp/pointmaze/{m}-v0" for m in POINTMAZE_MAZES]
             + [f"cdp/fetch/{t}-v0" for t in FETCH_TASKS]
             + [f"cdp/{e}/{k}-v0" for e in LOCOMOTION_ENVS for k in LOCOMOTION_KINDS])
    return difflib.get_close_matches(dataset_id, [*REMOTE_IDS, *local], n=n, cutoff=0.6)


def how_to_get(dataset_id: str) -> str:
    """Lines for a "dataset not found" error: does the id exist remotely at all, and how to get it
    (``minari download``) or build it."""
    command = local_build_command(dataset_id)
    if command is not None:
        where = ("\n  the D4RL files: docs/DATASETS.md, \"Getting the paper's own data\""
                 if dataset_id.startswith("cdp/d4rl/") else "")
        return f"  it is built by this project: run `{command}`{where}"
    family = remote_family(dataset_id)
    if family is not None:
        return (f"  it exists on Minari's server (checked {CHECKED_ON}): run "
                f"`minari download {dataset_id}`\n  its data: {family.data}")
    lines = [f"  {dataset_id!r} is neither built by this project nor among the Minari ids checked "
             f"on {CHECKED_ON} (cdp_jax.data.dataset_ids); `minari list remote` shows what the "
             f"server holds now, `minari download {dataset_id}` gets it if it is there"]
    similar = similar_ids(dataset_id)
    if similar:
        lines.append(f"  known ids like it: {', '.join(similar)}")
    lines.append(f"  or build a local dataset: `{local_build_command('cdp/pointmaze/umaze-v0')}` "
                 "(id cdp/pointmaze/umaze-v0); `python experiments/make_dataset.py --help` lists "
                 "every builder")
    return "\n".join(lines)


def d4rl_provenance(dataset_id: str) -> str | None:
    """What the data under ``dataset_id`` is when it is *not* D4RL's own data; None when it is
    (``cdp/d4rl/...``: an original D4RL file imported) or unknown.

    Minari's ids are regenerated or replayed data (see :data:`REMOTE_FAMILIES`); this project's
    ``cdp/...`` builds are its own data with its own reference scores.
    """
    family = remote_family(dataset_id)
    if family is not None:
        return family.data
    if dataset_id.startswith("cdp/d4rl/"):
        return None
    if local_build_command(dataset_id) is not None:
        return ("this project's own build, with its own behaviour policy and reference scores, "
                "see docs/DATASETS.md")
    return None
