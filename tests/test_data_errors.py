"""What the Minari loader says when a dataset is missing or damaged: a missing id gets the nearest
ids that exist (built here, on Minari's server, buildable) with how to get each; a damaged one gets
the damaged file as it is on disk, what is wrong with it, and the command that rebuilds it. Datasets
are three 5-step Pendulum episodes written with Minari's own writer into a temporary
MINARI_DATASETS_PATH."""

import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from cdp_jax.data import dataset_ids
from cdp_jax.data import minari as dm

LOCAL_ID = "cdp/pointmaze/umaze-v0"  # a buildable id, built (as Pendulum data) here


def _write(dataset_id):
    import gymnasium as gym

    from cdp_jax.data.builders import writer

    rng = np.random.default_rng(0)
    episodes = [writer.episode_buffer(e, rng.uniform(-1, 1, (6, 3)), rng.uniform(-2, 2, (5, 1)),
                                      rng.uniform(-1, 0, 5), np.zeros(5, bool), np.arange(5) == 4)
                for e in range(3)]
    return writer.write_dataset(dataset_id, episodes, env=gym.make("Pendulum-v1"))


@pytest.fixture(scope="module")
def built(minari_root):
    return _write(LOCAL_ID)


def _copy(minari_root, built, dataset_id):
    target = minari_root / dataset_id
    shutil.copytree(built, target)
    return target


def _edit_metadata(folder, edit):
    path = folder / "data" / "metadata.json"
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))


def _edit_hdf5(folder, edit):
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
        edit(f)


def _cut_rewards(f):
    rewards = f["episode_1/rewards"][:3]
    del f["episode_1/rewards"]
    f["episode_1"].create_dataset("rewards", data=rewards)


HDF5 = "data/main_data.hdf5"
# damage -> (what it does to the dataset's folder, the file named, what the message says of it).
DAMAGES = {
    "delete metadata.json": (lambda d: (d / "data/metadata.json").unlink(),
                             "data/metadata.json", "is missing"),
    "garbage in metadata.json": (lambda d: (d / "data/metadata.json").write_text("{ truncated"),
                                 "data/metadata.json", "is not JSON (Expecting property name"),
    "a key out of metadata.json": (lambda d: _edit_metadata(d, lambda m: m.pop("total_steps")),
                                   "data/metadata.json", "lacks the key(s) total_steps"),
    "truncate the HDF5 file": (lambda d: os.truncate(d / HDF5, (d / HDF5).stat().st_size // 3),
                               HDF5, "is truncated ("),
    "garbage in the HDF5 file": (lambda d: (d / HDF5).write_bytes(b"\x00not hdf5" * 100),
                                 HDF5, "is not an HDF5 file"),
    "delete the HDF5 file": (lambda d: (d / HDF5).unlink(), HDF5, "is missing"),
    "delete an episode": (lambda d: _edit_hdf5(d, lambda f: f.__delitem__("episode_1")),
                          HDF5, "lacks the episode 'episode_1'"),
    "delete an array": (lambda d: _edit_hdf5(d, lambda f: f["episode_2"].__delitem__("rewards")),
                        HDF5, "lacks the key 'rewards' in episode_2"),
    "cut an array": (lambda d: _edit_hdf5(d, _cut_rewards), HDF5,
                     "has a damaged episode_1: arrays of unequal length (observations 6, "
                     "actions 5, rewards 3, terminations 5, truncations 5;"),
    "delete the data folder": (lambda d: shutil.rmtree(d / "data"), "data/", "is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_dataset_names_the_file_and_the_rebuild(minari_root, built, damage):
    dataset_id = f"cdp/pointmaze/umaze-v{list(DAMAGES).index(damage) + 1}"  # buildable ids
    folder = _copy(minari_root, built, dataset_id)
    apply, shown, what = DAMAGES[damage]
    apply(folder)
    with pytest.raises(dm.DatasetCorruptError) as info:
        dm.load(dataset_id)
    message = str(info.value)
    first, rebuild = message.split("\n")
    assert first.startswith(f"Minari dataset {dataset_id!r} at {folder} is damaged: {shown} {what}")
    assert info.value.path == folder / shown.rstrip("/")
    assert rebuild == (f"  Rebuild it: `python experiments/make_dataset.py pointmaze --maze umaze "
                       f"--dataset-id {dataset_id} --overwrite`.")
    assert "Traceback" not in message


@pytest.mark.parametrize("dataset_id, rebuild", [
    ("D4RL/pointmaze/umaze-v2", "Download it again: `minari download --force D4RL/pointmaze/umaze-v2`"),
    ("cdp/hopper/medium-replay-v0", "Rebuild it: `python experiments/make_dataset.py locomotion --env "
                                    "hopper --kind medium-replay --policies results/behaviour/hopper "
                                    "--overwrite`"),
    ("cdp/test/mine-v0", "Delete that directory and get it again with the command that built it, "
                         "`python experiments/make_dataset.py ... --dataset-id cdp/test/mine-v0`"),
    ("my/own-v0", "Delete that directory and get it again the way it was made (`minari download "
                  "--force my/own-v0` if it is on Minari's server)"),
])
def test_the_rebuild_command_follows_the_id(minari_root, built, dataset_id, rebuild):
    folder = _copy(minari_root, built, dataset_id)
    (folder / "data" / "metadata.json").write_text("[]")  # Minari raises AttributeError here
    with pytest.raises(dm.DatasetCorruptError) as info:
        dm.load(dataset_id)
    assert "is damaged: data/metadata.json is not a JSON object (it holds a list)" in str(info.value)
    assert f"\n  {rebuild}" in str(info.value)


@pytest.fixture
def one_local(built, tmp_path, monkeypatch):
    """A datasets root holding only ``LOCAL_ID`` (the damaged copies would be nearer ids)."""
    shutil.copytree(built, tmp_path / LOCAL_ID)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))


def _nearest(message):
    """``{id: how to get it}`` of the "nearest ids" block, in order."""
    block = message.split("  nearest ids that exist or can be built:\n")[1]
    return dict(re.findall(r"^    (\S+) +(.+)[;.]$", block, flags=re.M))


def test_missing_id_names_the_nearest_local_ones(one_local):
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("cdp/pointmaze/umaz-v0")
    nearest = _nearest(str(info.value))
    assert list(nearest)[0] == LOCAL_ID and nearest[LOCAL_ID] == "here already"
    assert nearest["cdp/pointmaze/medium-v0"] == (
        "build: `python experiments/make_dataset.py pointmaze --maze medium`")
    # A remote id one version off: the remote id first, the local one beside it.
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("D4RL/pointmaze/umaze-v3")
    nearest = _nearest(str(info.value))
    assert list(nearest)[0] == "D4RL/pointmaze/umaze-v2"
    assert nearest["D4RL/pointmaze/umaze-v2"] == "download: `minari download D4RL/pointmaze/umaze-v2`"
    assert nearest[LOCAL_ID] == "here already"


def test_missing_remote_kind_names_the_one_built_here():
    message = dataset_ids.how_to_get("mujoco/hopper/medium-replay-v0")
    assert "neither built by this project nor among the Minari ids checked" in message
    nearest = _nearest(message)
    assert list(nearest)[0] == "cdp/hopper/medium-replay-v0"
    assert nearest["cdp/hopper/medium-replay-v0"] == (
        "build: `python experiments/make_dataset.py locomotion --env hopper --kind medium-replay "
        "--policies results/behaviour/hopper`")
    assert nearest["mujoco/hopper/medium-v0"] == "download: `minari download mujoco/hopper/medium-v0`"


def test_an_id_of_the_wrong_shape(one_local):
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("hopper")
    message = str(info.value)
    assert "'hopper' is not a dataset id: ids are namespace/name-v<version>" in message
    assert "minari download hopper" not in message
    assert all("hopper" in i for i in _nearest(message)) and len(_nearest(message)) == 4
    # A namespace folder (it holds datasets) is missing, not damaged.
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("cdp/pointmaze")
    assert _nearest(str(info.value))[LOCAL_ID] == "here already"


def test_a_known_id_names_the_ones_here(one_local):
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("cdp/pointmaze/medium-v0")
    message = str(info.value)
    assert "it is built by this project: run `python experiments/make_dataset.py pointmaze --maze " \
           "medium`" in message
    assert "  here already: cdp/pointmaze/umaze-v0." in message.splitlines()
    assert "nearest ids" not in message


def test_local_ids_are_the_folders_holding_data(tmp_path):
    for path in ("a/b-v0/data", "a/b-v0/data/not-an-id-v0/data", "c-v1/data", "a/empty-v0",
                 ".cdp-build-1/a/scratch-v0/data"):
        (tmp_path / path).mkdir(parents=True)
    assert dataset_ids.local_ids(tmp_path) == ["a/b-v0", "c-v1"]
    assert dataset_ids.local_ids(tmp_path / "missing") == []
