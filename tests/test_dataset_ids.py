"""Every dataset id the README, docs/ and the scripts' ``--help`` show exists: on Minari's server
(the checked list in cdp_jax/data/dataset_ids.py) or built by this project; and a missing dataset's
error says which of the two it is, or that it is neither."""

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

from cdp_jax.data import dataset_ids
from cdp_jax.data import minari as dm

ROOT = Path(__file__).resolve().parents[1]
# A Minari id as the docs write one: namespace/.../name-vN; not inside a URL or a file path
# (preceded by "." or "/"), not a template (cdp/<env>/<kind>-v0).
DATASET_ID = re.compile(r"(?<![\w./<>-])(?:[A-Za-z0-9_]+/)+[A-Za-z0-9_.-]+?-v\d+(?![\w-])")
# Stands for the user's own dataset in examples ("a dataset with no per-task row").
PLACEHOLDERS = {"my/dataset-v0"}


def _load(path):
    spec = importlib.util.spec_from_file_location(f"_ids_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in a script look their module up there
    spec.loader.exec_module(module)
    return module


def _help(entry, args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry([*args, "--help"])
    return out.getvalue()


def _help_texts() -> dict[str, str]:
    """``--help`` of every script in experiments/, and of each subcommand; the docstring of a
    module there that is no command (the studies' shared runner and diagnostics)."""
    texts = {}
    for path in sorted((ROOT / "experiments").glob("*.py")):
        module = _load(path)
        entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
        if entry is None:
            texts[path.name] = module.__doc__ or ""
            continue
        texts[path.name] = text = _help(entry, [])
        usage = text.split("\n\n")[0]
        subcommands = re.search(r"\{([\w,-]+)\}\s+\.\.\.", usage)
        for name in subcommands[1].split(",") if subcommands else []:
            texts[f"{path.name} {name}"] = _help(entry, [name])
    return texts


def test_documented_ids_exist_or_are_built_here():
    texts = {str(p.relative_to(ROOT)): p.read_text()
             for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    texts.update({f"{name} --help": text for name, text in _help_texts().items()})
    assert "make_dataset.py pointmaze --help" in texts  # subcommands are read too
    shown = {(where, i) for where, text in texts.items() for i in DATASET_ID.findall(text)}
    assert {i for _, i in shown} >= {"cdp/pointmaze/umaze-v0", "D4RL/pointmaze/umaze-v2"}
    unknown = sorted((where, i) for where, i in shown
                     if i not in PLACEHOLDERS and not dataset_ids.known(i))
    assert not unknown, (f"ids neither in cdp_jax.data.dataset_ids (checked remote ids) nor built "
                         f"by experiments/make_dataset.py: {unknown}")


def test_the_list_records_where_and_when():
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", dataset_ids.CHECKED_ON)
    for family in dataset_ids.REMOTE_FAMILIES:
        assert family.ids and family.checked_at and family.data
    assert "mujoco/hopper/medium-v0" in dataset_ids.REMOTE_IDS
    assert not dataset_ids.known("mujoco/hopper/medium-replay-v0")  # the README's old mistake
    assert dataset_ids.known("cdp/hopper/medium-replay-v0")
    assert dataset_ids.known("cdp/d4rl/hopper-medium-replay-v2")


def test_local_ids_follow_the_builders():
    from cdp_jax.data.builders import fetch, locomotion, pointmaze

    assert set(dataset_ids.POINTMAZE_MAZES) == set(pointmaze.MAZES)
    assert set(dataset_ids.FETCH_TASKS) == set(fetch.TASKS)
    assert set(dataset_ids.LOCOMOTION_ENVS) == set(locomotion.ENVS)
    assert tuple(dataset_ids.LOCOMOTION_KINDS) == tuple(locomotion.KINDS)
    assert dataset_ids.local_build_command("cdp/pointmaze/umaze-dense-v0") == (
        "python experiments/make_dataset.py pointmaze --maze umaze --reward-type dense")
    assert dataset_ids.local_build_command("cdp/walker2d/medium-replay-v1").endswith(
        "--kind medium-replay --policy-dir runs/behaviour/walker2d "
        "--dataset-id cdp/walker2d/medium-replay-v1")
    # Hopper's policies are in git: its datasets build from them, with no SAC run.
    shipped = {p.parent.name for p in (ROOT / "results" / "behaviour").glob("*/policies.json")}
    assert set(dataset_ids.SHIPPED_POLICIES) == shipped
    assert dataset_ids.local_build_command("cdp/hopper/medium-replay-v0") == (
        "python experiments/make_dataset.py locomotion --env hopper --kind medium-replay "
        "--policies results/behaviour/hopper")
    assert dataset_ids.local_build_command("D4RL/pointmaze/umaze-v2") is None


@pytest.mark.parametrize("dataset_id, fragments", [
    ("mujoco/hopper/medium-v0", ["exists on Minari's server (checked 2026-12-05)",
                                 "`minari download mujoco/hopper/medium-v0`", "not D4RL's"]),
    ("mujoco/hopper/medium-replay-v0", [
        "neither built by this project nor among the Minari ids checked on 2026-12-05",
        "`minari list remote`",
        "  nearest ids that exist or can be built:\n    cdp/hopper/medium-replay-v0  build: "]),
    ("cdp/d4rl/hopper-medium-replay-v2", [
        "make_dataset.py d4rl --file <the D4RL .hdf5 file of hopper-medium-replay-v2>",
        "Getting the paper's own data"]),
])
def test_missing_dataset_says_whether_it_exists_remotely(minari_root, dataset_id, fragments):
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load(dataset_id)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_paper_preset_says_when_the_data_is_not_d4rls(minari_root, tmp_path, capsys):
    from cdp_jax import cli, paper

    note = paper.data_provenance_note("mujoco/hopper/medium-v0")
    for fragment in ("is not the paper's data (Minari's own data", "row, hopper-medium, is the "
                     "nearest official analogue", "not comparable with the paper's"):
        assert fragment in note
    assert "cdp_jax's own (this task is not in the paper)" in paper.data_provenance_note(
        "cdp/pointmaze/umaze-v0")
    assert paper.data_provenance_note("cdp/d4rl/hopper-medium-replay-v2") is None  # D4RL's file
    assert paper.data_provenance_note("my/dataset-v0") is None  # no row: values given by hand
    # train.py says so when the run starts, before it needs the data (missing here: error 2).
    train = _load(ROOT / "experiments" / "train.py")
    code = cli.run(train.main, ["--preset", "paper", "--dataset", "mujoco/hopper/medium-v0",
                                "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == cli.EXIT_USER_ERROR
    assert f"note: {note}" in out.splitlines()


def test_nearest_ids():
    nearest = dataset_ids.nearest_ids
    # The same name in another version first, then by similarity; case is ignored.
    assert nearest("D4RL/pointmaze/umaze-v3")[:2] == ["D4RL/pointmaze/umaze-v2",
                                                      "D4RL/antmaze/umaze-v1"]
    assert nearest("d4rl/kitchen/mixed-v2")[0] == "D4RL/kitchen/mixed-v2"
    # Ids built here count, and a bare word finds the ids holding it.
    assert nearest("my/umaze-v0", local=["my/umaze-v1"])[0] == "my/umaze-v1"
    assert set(nearest("walker2d", n=100)) == {
        *(f"mujoco/walker2d/{k}-v0" for k in ("simple", "medium", "expert")),
        *(f"cdp/walker2d/{k}-v0" for k in dataset_ids.LOCOMOTION_KINDS)}
    assert nearest("zzzz/qqqq-v0") == []
    assert "cdp/pointmaze/umaze-v0" not in nearest("cdp/pointmaze/umaze-v0")  # not itself
