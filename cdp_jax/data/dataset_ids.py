"""Which dataset ids exist: the Minari server's (checked by hand, with where and when) and the ones
this project builds (``experiments/make_dataset.py``).

This machine-independent list is what the "dataset not found" errors (with the nearest ids that
exist, :func:`nearest_ids`), the damaged-dataset errors (the command that rebuilds one,
:func:`how_to_rebuild`), the ``--preset paper`` provenance note and the documentation test (every
id the README, ``docs/`` and the scripts' ``--help`` show is here or built here) read. It holds the
Minari families the project names or maps to a paper task row, not the whole server: ``minari list
remote`` shows what the server holds now.

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
import os
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
# Envs whose behaviour policies (and training record) are in git, under results/behaviour/<env>/:
# their four datasets build from those files, with no SAC run (docs/DATASETS.md).
SHIPPED_POLICIES = ("hopper",)


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
        if env in SHIPPED_POLICIES:
            return _with_id(f"{_MAKE} locomotion --env {env} --kind {kind} --policies "
                            f"results/behaviour/{env}", dataset_id, f"cdp/{env}/{kind}-v0")
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


def buildable_ids() -> list[str]:
    """The ids this project's builders make by default (``random`` and ``d4rl`` take any env or
    file, so they have no list)."""
    return ([f"cdp/pointmaze/{m}{d}-v0" for m in POINTMAZE_MAZES for d in ("", "-dense")]
            + [f"cdp/fetch/{t}-v0" for t in FETCH_TASKS]
            + [f"cdp/{e}/{k}-v0" for e in LOCOMOTION_ENVS for k in LOCOMOTION_KINDS])


def local_ids(root) -> list[str]:
    """The ids of the datasets under a Minari root: each folder (hidden ones and build scratch
    ``.cdp-build-*`` aside) that holds a ``data/`` folder, as Minari's ``list_local_datasets``
    recognises them, sorted."""
    found = []
    for folder, subfolders, _ in os.walk(root):
        if "data" in subfolders:
            found.append(os.path.relpath(folder, root).replace(os.sep, "/"))
            subfolders.clear()  # a dataset holds no other dataset
        else:
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
    return sorted(i for i in found if i != ".")


def _words(dataset_id: str) -> set[str]:
    return set(re.split(r"[/_-]+", re.sub(r"-v\d+$", "", dataset_id.lower()))) - {""}


def nearest_ids(dataset_id: str, local=(), n: int | None = 4) -> list[str]:
    """Existing ids nearest ``dataset_id``: among ``local`` (built or downloaded here, see
    :func:`local_ids`), the checked remote ids and :func:`buildable_ids`.

    An id with the same name in another version comes first (``D4RL/pointmaze/umaze-v3`` ->
    ``-v2``), then by ``difflib`` similarity (at least 0.6) or, for a bare word such as
    ``hopper``, ids holding every word of it; case is ignored. At most ``n`` (None: all).
    """
    query = dataset_id.lower()
    unversioned, words = re.sub(r"-v\d+$", "", query), _words(dataset_id)

    def rank(candidate: str) -> tuple[bool, float]:
        low = candidate.lower()
        return (re.sub(r"-v\d+$", "", low) == unversioned,
                difflib.SequenceMatcher(None, query, low).ratio())

    candidates = dict.fromkeys([*local, *REMOTE_IDS, *buildable_ids()])
    candidates.pop(dataset_id, None)
    near = [c for c in candidates
            if rank(c)[0] or rank(c)[1] >= 0.6 or (words and words <= _words(c))]
    return sorted(near, key=rank, reverse=True)[:n]


def where_to_get(dataset_id: str, local=()) -> str:
    """How to get an existing id, in a few words: here already, ``minari download`` or a build."""
    if dataset_id in local:
        return "here already"
    if dataset_id in REMOTE_IDS:
        return f"download: `minari download {dataset_id}`"
    command = local_build_command(dataset_id)
    return f"build: `{command}`" if command else "unknown"


def well_formed(dataset_id: str) -> bool:
    """Whether ``dataset_id`` is shaped like a versioned Minari id, ``[namespace/]name-v<N>``."""
    return re.fullmatch(r"(?:[\w-]+/)*[\w-]+?-v\d+", dataset_id) is not None


def how_to_get(dataset_id: str, local=()) -> str:
    """Lines for a "dataset not found" error: does the id exist remotely at all, and how to get it
    (``minari download``) or build it; for an id neither remote nor built here, the nearest ids
    that exist (``local``: the ids under the datasets root, :func:`local_ids`) and how to get
    each."""
    # Lines end in "." or ";": the command line joins them into one (cdp_jax.cli).
    command = local_build_command(dataset_id)
    family = remote_family(dataset_id)
    if command is not None or family is not None:
        if command is not None:
            lines = [f"  it is built by this project: run `{command}`."]
            if dataset_id.startswith("cdp/d4rl/"):
                lines.append("  the D4RL files: docs/DATASETS.md, \"Getting the paper's own data\".")
        else:
            lines = [f"  it exists on Minari's server (checked {CHECKED_ON}): run "
                     f"`minari download {dataset_id}`.", f"  its data: {family.data}."]
        here = [i for i in nearest_ids(dataset_id, local, n=None) if i in local][:3]
        if here:
            lines.append(f"  here already: {', '.join(here)}.")
        return "\n".join(lines)
    if well_formed(dataset_id):
        lines = [f"  {dataset_id!r} is neither built by this project nor among the Minari ids "
                 f"checked on {CHECKED_ON} (cdp_jax.data.dataset_ids);",
                 f"  `minari list remote` shows what the server holds now, `minari download "
                 f"{dataset_id}` gets it if it is there."]
    else:
        lines = [f"  {dataset_id!r} is not a dataset id: ids are namespace/name-v<version>, e.g. "
                 "cdp/pointmaze/umaze-v0 or D4RL/pointmaze/umaze-v2."]
    nearest = nearest_ids(dataset_id, local)
    if nearest:
        width = max(map(len, nearest))
        lines.append("  nearest ids that exist or can be built:")
        lines += [f"    {i:<{width}}  {where_to_get(i, local)}{';' if k < len(nearest) - 1 else '.'}"
                  for k, i in enumerate(nearest)]
    lines.append("  `python experiments/make_dataset.py --help` lists every builder.")
    return "\n".join(lines)


def how_to_rebuild(dataset_id: str) -> str:
    """What to run to replace a damaged dataset with a good one: its build command with
    ``--overwrite`` (this project's ids), ``minari download --force`` (the checked remote ids), or
    for other ids the way it was made."""
    command = local_build_command(dataset_id)
    if command is not None:
        return f"Rebuild it: `{command} --overwrite`."
    if dataset_id in REMOTE_IDS:
        return f"Download it again: `minari download --force {dataset_id}`."
    if dataset_id.startswith("cdp/"):
        return ("Delete that directory and get it again with the command that built it, "
                f"`python experiments/make_dataset.py ... --dataset-id {dataset_id}` (or add "
                "--overwrite to that command instead of deleting).")
    return ("Delete that directory and get it again the way it was made (`minari download "
            f"--force {dataset_id}` if it is on Minari's server).")


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
