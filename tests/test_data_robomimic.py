"""The robomimic HDF5 reader, on small files the tests write."""

import json

import h5py
import numpy as np
import pytest

from cdp_jax.data import robomimic
from cdp_jax.data.dataset import DatasetCorruptError, DatasetNotFoundError, ObservationKeyError

LENGTHS = {"demo_0": 5, "demo_1": 7, "demo_10": 4}  # demo_10 sorts after demo_1 numerically


def write_file(path, next_obs=True):
    """pos[t] = [d, t, 0], vel[t] = [t, t], actions[t] = [d, -t]; demo_10 is not done."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1})
        for name, n in LENGTHS.items():
            d = int(name.split("_")[1])
            g = data.create_group(name)
            t = np.arange(n + 1, dtype=np.float64)
            pos = np.stack([np.full(n + 1, d), t, np.zeros(n + 1)], axis=1)
            vel = np.stack([t, t], axis=1)
            g.create_dataset("obs/pos", data=pos[:-1])
            g.create_dataset("obs/vel", data=vel[:-1])
            if next_obs:
                g.create_dataset("next_obs/pos", data=pos[1:])
                g.create_dataset("next_obs/vel", data=vel[1:])
            g.create_dataset("actions", data=np.stack([np.full(n, d), -t[:-1]], axis=1))
            g.create_dataset("rewards", data=(t[:-1] == n - 1).astype(float))
            dones = np.zeros(n)
            if name != "demo_10":
                dones[-1] = 1
            g.create_dataset("dones", data=dones)
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10"]))
    return path


def test_reads_demos_as_transitions(tmp_path):
    d = robomimic.load(write_file(tmp_path / "demo.hdf5"), obs_keys=("pos", "vel"))
    assert len(d) == 16 and d.num_episodes == 3 and d.obs_dim == 5 and d.act_dim == 2
    np.testing.assert_array_equal(np.unique(d.episode_ids), [0, 1, 10])
    np.testing.assert_array_equal(d.observations[:2], [[0, 0, 0, 0, 0], [0, 1, 0, 1, 1]])
    # next_obs comes from the file; within a demo it equals the next row's obs.
    np.testing.assert_array_equal(d.next_observations[4], [0, 5, 0, 5, 5])
    np.testing.assert_array_equal(d.next_observations[:4], d.observations[1:5])
    # Done demos end in a terminal; the demo that is not done ends in a timeout.
    ends = np.array([4, 11, 15])
    np.testing.assert_array_equal(d.terminals[ends], [1, 1, 0])
    np.testing.assert_array_equal(d.timeouts[ends], [0, 0, 1])
    assert d.terminals.sum() + d.timeouts.sum() == 3
    assert d.extras["env_args"]["env_name"] == "Lift" and d.eval_env_spec is None


def test_windows_and_subsets(tmp_path):
    path = write_file(tmp_path / "demo.hdf5", next_obs=False)
    d = robomimic.load(path, obs_keys=("vel",))
    w = robomimic.windows(d, obs_horizon=2, action_horizon=3)
    assert w["observations"].shape == (16, 2, 2) and w["actions"].shape == (16, 3, 2)
    np.testing.assert_array_equal(w["observations"][5, :, 0], [0, 0])  # demo_1 starts at row 5
    np.testing.assert_array_equal(w["actions"][11, :, 1], [-6, -6, -6])  # demo_1's last action
    np.testing.assert_array_equal(d.next_observations[4], d.observations[4])  # no next_obs: repeat
    train = robomimic.load(path, obs_keys=("vel",), filter_key="train")
    np.testing.assert_array_equal(np.unique(train.episode_ids), [0, 10])
    two = robomimic.load(path, obs_keys=("vel",), num_episodes=2, seed=0)
    assert two.num_episodes == 2
    with pytest.raises(ValueError, match="filter_key 'valid' not in"):
        robomimic.load(path, obs_keys=("vel",), filter_key="valid")


def test_errors(tmp_path):
    path = write_file(tmp_path / "demo.hdf5")
    with pytest.raises(ObservationKeyError) as info:
        robomimic.load(path, obs_keys=("pos", "object"))
    assert "observation key 'object' not in demo_0/obs; available keys: ['pos', 'vel']" in str(
        info.value)
    with pytest.raises(DatasetNotFoundError, match="robomimic file not found"):
        robomimic.load(tmp_path / "missing.hdf5", obs_keys=("pos",))
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DatasetCorruptError, match="is unreadable"):
        robomimic.load(bad, obs_keys=("pos",))
    with pytest.raises(ValueError, match="fraction must be in"):
        robomimic.load(path, obs_keys=("pos",), fraction=0)
