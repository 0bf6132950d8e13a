"""Minari loading and the PointMaze / random builders, on datasets built into a temporary
MINARI_DATASETS_PATH (nothing touches ~/.minari)."""

import json
import os
import shutil

import numpy as np
import pytest

from cdp_jax.data import minari as dm
from cdp_jax.data.builders import pointmaze, random_policy
from cdp_jax.data.dataset import OfflineDataset, episode_bounds

DATASET_ID = "cdp/test/umaze-v0"
NUM_STEPS = 5000


@pytest.fixture(scope="module")
def built(minari_root):
    """A small umaze dataset (summary dict) with 50-episode reference scores."""
    return pointmaze.build("umaze", NUM_STEPS, seed=0, dataset_id=DATASET_ID,
                           num_reference_episodes=50)


@pytest.fixture(scope="module")
def data(built) -> OfflineDataset:
    return dm.load(DATASET_ID)


def test_round_trip_counts(built, data):
    import minari

    raw = minari.load_dataset(DATASET_ID)
    assert len(data) == NUM_STEPS == raw.total_steps
    assert data.num_episodes == built["num_episodes"] == raw.total_episodes
    assert np.unique(data.episode_ids).size == data.num_episodes
    assert data.obs_keys == ("observation", "desired_goal")
    assert data.observations.shape == data.next_observations.shape == (NUM_STEPS, 6)
    assert data.actions.shape == (NUM_STEPS, 2)
    for name in ("observations", "actions", "rewards", "next_observations", "terminals",
                 "timeouts"):
        assert getattr(data, name).dtype == np.float32, name
    assert np.all(np.abs(data.actions) <= 1.0)


def test_transitions_consistent(data):
    start, end = episode_bounds(data.episode_ids)
    last = np.flatnonzero(np.arange(len(data)) == end)
    inner = np.setdiff1d(np.arange(len(data) - 1), last)
    # Within an episode the next observation is the following row's observation, exactly.
    np.testing.assert_array_equal(data.next_observations[inner], data.observations[inner + 1])
    # Across a boundary the goal changes (a continuing task: the ball keeps its state).
    crossing = last[:-1]
    goal_changed = data.next_observations[crossing, 4:] != data.observations[crossing + 1, 4:]
    assert np.all(np.any(goal_changed, axis=1))
    np.testing.assert_array_equal(data.next_observations[crossing, :4],
                                  data.observations[crossing + 1, :4])
    # Every episode ends in a timeout (goal reached / recording stopped); none terminates.
    assert np.all(data.timeouts[last] == 1.0) and data.timeouts.sum() == last.size
    assert data.terminals.sum() == 0
    assert not np.any((data.terminals == 1) & (data.timeouts == 1))
    # Sparse reward: 1 exactly where the goal was reached, i.e. at the end of all but the last.
    assert np.all(data.rewards[last[:-1]] == 1.0)


def test_build_is_deterministic(minari_root, data):
    again = pointmaze.build("umaze", NUM_STEPS, seed=0, dataset_id="cdp/test/umaze-again-v0",
                            num_reference_episodes=2)
    other = pointmaze.build("umaze", NUM_STEPS, seed=1, dataset_id="cdp/test/umaze-seed1-v0",
                            num_reference_episodes=2)
    a, b = dm.load(again["dataset_id"]), dm.load(other["dataset_id"])
    for name, x in data.transitions().items():
        np.testing.assert_array_equal(getattr(a, name), x, err_msg=name)
    assert not np.array_equal(b.observations[:100], data.observations[:100])


def test_controller_reaches_goals():
    _, episodes, stats = pointmaze.collect("umaze", 20_000, seed=3)
    assert stats["num_goals"] >= 150
    assert stats["success_rate"] > 0.95
    # Noise-free on the evaluation env (300 steps): it reaches and then holds the goal.
    returns = pointmaze.reference_return("umaze", "controller", num_episodes=40, seed=7)
    assert np.mean(returns > 0) > 0.95


def test_normalized_scores(data):
    import minari

    assert data.ref_max_score > data.ref_min_score + 100
    controller = pointmaze.reference_return("umaze", "controller", num_episodes=50, seed=11)
    random = pointmaze.reference_return("umaze", "random", num_episodes=50, seed=12)
    assert abs(dm.normalized_score(data, controller.mean()) - 100.0) < 12.0
    assert abs(dm.normalized_score(data, random.mean())) < 12.0
    raw = minari.load_dataset(DATASET_ID)
    np.testing.assert_allclose(minari.get_normalized_score(raw, np.array([controller.mean()])),
                               dm.normalized_score(data, controller.mean()) / 100.0, rtol=1e-6)


def test_eval_env_and_vector_observations(data):
    env = data.make_env()
    assert env.spec.id == "PointMaze_UMaze-v3" and env.spec.max_episode_steps == 300
    venv = dm.make_env(data, num_envs=3)
    obs, _ = venv.reset(seed=0)
    flat = dm.flatten_observation(obs, data.obs_keys)
    assert flat.shape == (3, data.obs_dim) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat[:, :4], obs["observation"].astype(np.float32))
    np.testing.assert_array_equal(flat[:, 4:], obs["desired_goal"].astype(np.float32))
    venv.close()


def _episode_lengths(d):
    ids, counts = np.unique(d.episode_ids, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def test_fraction_and_count_select_whole_episodes(data):
    full = _episode_lengths(data)
    half = dm.load(DATASET_ID, fraction=0.5, seed=0)
    assert half.num_episodes == round(0.5 * data.num_episodes)
    assert all(full[i] == n for i, n in _episode_lengths(half).items())  # whole episodes
    assert len(half) == sum(_episode_lengths(half).values())
    again = dm.load(DATASET_ID, fraction=0.5, seed=0)
    np.testing.assert_array_equal(again.episode_ids, half.episode_ids)
    np.testing.assert_array_equal(again.observations, half.observations)
    other = dm.load(DATASET_ID, fraction=0.5, seed=1)
    assert set(other.episode_ids) != set(half.episode_ids)
    ten = dm.load(DATASET_ID, num_episodes=10, seed=0)
    assert ten.num_episodes == 10 and all(full[i] == n for i, n in _episode_lengths(ten).items())
    # A smaller fraction under the same seed keeps a subset of a larger one.
    assert set(dm.load(DATASET_ID, fraction=0.2, seed=0).episode_ids) <= set(half.episode_ids)


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "fraction must be in (0, 1], got 0.0"),
    ({"fraction": 1.5}, "fraction must be in (0, 1], got 1.5"),
    ({"num_episodes": 0}, "num_episodes must be an integer in [1, "),
    ({"fraction": 0.5, "num_episodes": 3}, "pass at most one of fraction and num_episodes"),
])
def test_bad_subset_arguments(built, kwargs, message):
    with pytest.raises(ValueError) as info:
        dm.load(DATASET_ID, **kwargs)
    assert message in str(info.value)


def test_unknown_id_says_how_to_get_it(minari_root):
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("D4RL/pointmaze/umaze-v2")
    message = str(info.value)
    assert "minari download D4RL/pointmaze/umaze-v2" in message
    assert "experiments/make_dataset.py" in message
    with pytest.raises(dm.DatasetNotFoundError) as info:
        dm.load("cdp/pointmaze/medium-v0")
    assert "python experiments/make_dataset.py pointmaze --maze medium" in str(info.value)
    with pytest.raises(ValueError, match="dataset_id 'no-version' is malformed"):
        pointmaze.build("umaze", 10, dataset_id="no-version")
    with pytest.raises(ValueError, match="maze must be one of"):
        pointmaze.build("spiral", 10)


def test_wrong_observation_key(built):
    with pytest.raises(dm.ObservationKeyError) as info:
        dm.load(DATASET_ID, obs_keys=("observation", "goal"))
    assert "observation key 'goal' not found; available keys:" in str(info.value)
    assert "desired_goal" in str(info.value)
    custom = dm.load(DATASET_ID, obs_keys=("desired_goal", "observation"), num_episodes=2)
    assert custom.obs_keys == ("desired_goal", "observation") and custom.obs_dim == 6


@pytest.mark.parametrize("damage, shown", [
    ("truncate_hdf5", "data/main_data.hdf5 is truncated ("),
    ("garbage_hdf5", "data/main_data.hdf5 is not an HDF5 file."),
    ("garbage_metadata", "data/metadata.json is not JSON (Expecting property name enclosed in "
                         "double quotes at line 1, column 3)."),
])
def test_corrupt_dataset(minari_root, built, damage, shown):
    """More damages, and the command each message gives: tests/test_data_errors.py."""
    damaged_id = f"cdp/test/damaged-{damage.replace('_', '-')}-v0"
    target = minari_root / damaged_id
    shutil.copytree(minari_root / DATASET_ID, target)
    data_dir = target / "data"
    if damage == "truncate_hdf5":
        path = data_dir / "main_data.hdf5"
        os.truncate(path, path.stat().st_size // 3)
    elif damage == "garbage_hdf5":
        (data_dir / "main_data.hdf5").write_bytes(b"\x00not an hdf5 file" * 100)
    else:
        (data_dir / "metadata.json").write_text("{ truncated")
    with pytest.raises(dm.DatasetCorruptError) as info:
        dm.load(damaged_id)
    assert f"Minari dataset {damaged_id!r} at {target} is damaged: {shown}" in str(info.value)
    assert info.value.path == target / shown.split(" ")[0]


def test_interrupted_build_leaves_nothing(minari_root, built, monkeypatch):
    from minari.dataset._storages import hdf5_storage

    original = hdf5_storage.HDF5Storage.update_episodes

    def write_a_few_then_die(self, episodes):
        original(self, list(episodes)[:3])
        raise KeyboardInterrupt

    monkeypatch.setattr(hdf5_storage.HDF5Storage, "update_episodes", write_a_few_then_die)
    before = sorted(p.name for p in minari_root.iterdir())
    with pytest.raises(KeyboardInterrupt):
        pointmaze.build("umaze", 2000, dataset_id="cdp/test/interrupted-v0",
                        num_reference_episodes=2)
    assert not (minari_root / "cdp/test/interrupted-v0").exists()
    # An interrupted overwrite keeps the complete old dataset.
    with pytest.raises(KeyboardInterrupt):
        pointmaze.build("umaze", 2000, dataset_id=DATASET_ID, num_reference_episodes=2,
                        overwrite=True)
    assert len(dm.load(DATASET_ID)) == NUM_STEPS
    assert sorted(p.name for p in minari_root.iterdir()) == before  # no scratch left
    with pytest.raises(dm.DatasetNotFoundError):
        dm.load("cdp/test/interrupted-v0")


def test_existing_dataset_needs_overwrite(built):
    with pytest.raises(FileExistsError) as info:
        pointmaze.build("umaze", 100, dataset_id=DATASET_ID, num_reference_episodes=1)
    assert "pass overwrite=True (CLI: --overwrite)" in str(info.value)


def test_random_policy_box_observations(minari_root):
    summary = random_policy.build("Pendulum-v1", 500, seed=0, dataset_id="cdp/test/pendulum-v0")
    d = dm.load(summary["dataset_id"])
    assert d.obs_keys == () and d.observations.shape == (500, 3) and d.num_episodes == 3
    assert d.timeouts.sum() == 3 and d.terminals.sum() == 0
    again = random_policy.collect("Pendulum-v1", 500, seed=0)[1]
    np.testing.assert_array_equal(np.asarray(again[0].actions, np.float32),
                                  d.actions[d.episode_ids == 0])


def test_random_policy_terminations_are_not_timeouts(minari_root):
    summary = random_policy.build("CartPole-v1", 400, seed=0, dataset_id="cdp/test/cartpole-v0")
    d = dm.load(summary["dataset_id"])
    start, end = episode_bounds(d.episode_ids)
    last = np.flatnonzero(np.arange(len(d)) == end)
    assert d.terminals[last[:-1]].sum() == last.size - 1  # every finished episode terminated
    assert d.timeouts[last[-1]] == 1.0 and d.timeouts.sum() == 1  # the recording was cut
    assert d.terminals.sum() + d.timeouts.sum() == d.num_episodes
    inner = np.setdiff1d(np.arange(len(d) - 1), last)
    np.testing.assert_array_equal(d.next_observations[inner], d.observations[inner + 1])


def test_make_dataset_cli(minari_root, capsys):
    """In process (test_build_and_load_print_no_adroit_notice runs the script as a script)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "make_dataset.py")
    spec = importlib.util.spec_from_file_location("make_dataset", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as info:
        cli.main(["pointmaze", "--help"])
    help_text = capsys.readouterr().out
    assert info.value.code == 0 and "--num-steps" in help_text and "--maze" in help_text
    cli.main(["pointmaze", "--num-steps", "1500", "--num-reference-episodes", "2",
              "--dataset-id", "cdp/test/cli-v0", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_steps"] == 1500 and os.path.isdir(summary["path"])
    assert len(dm.load("cdp/test/cli-v0")) == 1500



def test_build_and_load_print_no_adroit_notice(tmp_path):
    """gymnasium-robotics prints a notice about its Adroit hand envs when first imported (once per
    process, so a fresh interpreter: the script as a user runs it); it landed inside the dataset
    build's progress bar."""
    import subprocess
    import sys
    from importlib.metadata import version

    notices = pytest.importorskip("farama_notifications").notifications
    if dm.ADROIT_NOTICE not in notices.get("gymnasium_robotics", {}).get(
            version("gymnasium-robotics"), ""):
        pytest.skip("this gymnasium-robotics version prints no Adroit notice")
    root = os.path.join(os.path.dirname(__file__), "..")
    env = dict(os.environ, PYTHONPATH=root, MINARI_DATASETS_PATH=str(tmp_path))
    run = subprocess.run([sys.executable, os.path.join(root, "experiments", "make_dataset.py"),
                          "pointmaze", "--num-steps", "300", "--num-reference-episodes", "1",
                          "--dataset-id", "cdp/test/quiet-v0"],
                         env=env, capture_output=True, text=True, check=True)
    assert dm.ADROIT_NOTICE not in run.stderr + run.stdout
    assert "pointmaze dataset: 100%" in run.stderr  # the rest of stderr still comes through
    # Loading an existing dataset and making its env (what train.py does when it need not build).
    load = ("from cdp_jax.data import minari\n"
            "data = minari.load('cdp/test/quiet-v0')\n"
            "data.make_env().close()\n"
            "print(len(data))\n")
    run = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True,
                         check=True)
    assert dm.ADROIT_NOTICE not in run.stderr and run.stdout.split() == ["300"]


@pytest.mark.slow
def test_quickstart_build_under_a_minute(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    summary = pointmaze.build("umaze")  # the quickstart defaults
    # CPU time: wall time on a shared CI machine measures the neighbours, not the build.
    assert summary["cpu_seconds"] < 60.0, summary
    assert summary["success_rate"] > 0.95
    assert len(dm.load("cdp/pointmaze/umaze-v0")) == summary["num_steps"]


def test_dataset_from_minari_data_collector(minari_root):
    """Datasets made by Minari's DataCollector (as the remote D4RL ones are) load the same way."""
    import gymnasium as gym
    import minari

    env = minari.DataCollector(gym.make("CartPole-v1", max_episode_steps=20), record_infos=True)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(70):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    env.create_dataset("cdp/test/collector-v0", eval_env="CartPole-v1", algorithm_name="random",
                       author="t", author_email="t", code_permalink="t", description="t")
    d = dm.load("cdp/test/collector-v0")
    raw = minari.load_dataset("cdp/test/collector-v0")
    assert len(d) == raw.total_steps and d.num_episodes == raw.total_episodes
    assert d.actions.shape == (len(d), 1) and d.obs_keys == ()
    start, end = episode_bounds(d.episode_ids)
    last = np.flatnonzero(np.arange(len(d)) == end)
    assert np.all(d.terminals[last] + d.timeouts[last] == 1)
    assert d.terminals.sum() + d.timeouts.sum() == d.num_episodes


def _write_pendulum(dataset_id, damage=None):
    """Three 5-step Pendulum-v1 episodes written with Minari's own writer, ``damage(key, arrays)``
    editing episode 1's arrays (``obs``, ``actions``, ``rewards``) in place first."""
    import gymnasium as gym

    from cdp_jax.data.builders import writer

    rng = np.random.default_rng(0)
    episodes = []
    for e in range(3):
        arrays = {"obs": rng.uniform(-1, 1, (6, 3)), "actions": rng.uniform(-2, 2, (5, 1)),
                  "rewards": rng.uniform(-1, 0, 5)}
        if e == 1 and damage is not None:
            damage(arrays)
        episodes.append(writer.episode_buffer(e, arrays["obs"], arrays["actions"], arrays["rewards"],
                                              np.zeros(5, bool), np.arange(5) == 4))
    writer.write_dataset(dataset_id, episodes, env=gym.make("Pendulum-v1"))


@pytest.mark.parametrize("key, row, column, value, shown", [
    ("actions", 3, 0, np.nan, "actions hold NaN / inf in 1 episode(s) (1 row(s)); the first is "
                              "episode 1, step 3, column 0 (value nan)"),
    ("obs", 2, 1, np.inf, "observations hold NaN / inf in 1 episode(s) (1 row(s)); the first is "
                          "episode 1, step 2, column 1 (value inf)"),
    ("obs", 5, 2, np.nan, "next_observations hold NaN / inf in 1 episode(s) (1 row(s)); the first "
                          "is episode 1, step 4, column 2 (value nan)"),  # the final next obs
    ("rewards", 0, None, -np.inf, "rewards hold NaN / inf in 1 episode(s) (1 row(s)); the first is "
                                  "episode 1, step 0 (value -inf)"),
])
def test_non_finite_values_in_the_file_are_reported(minari_root, key, row, column, value, shown):
    def damage(arrays):
        arrays[key][(row,) if column is None else (row, column)] = value

    dataset_id = f"cdp/test/nonfinite-{key}-{row}-v0"
    _write_pendulum(dataset_id, damage)
    with pytest.raises(dm.DatasetValueError) as info:
        dm.load(dataset_id)
    assert f"dataset {dataset_id!r}: {shown}" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("agent", ["dql", "dbc"])  # transitions and windows agents
def test_training_data_preparation_checks_values(minari_root, agent):
    """Data that skipped the loader's check (built in memory) is checked again before training; a
    NaN action no longer hides an out-of-range one (max |a| was NaN, the guard false, 5.0 clipped)."""
    import dataclasses

    from cdp_jax import run_config, training
    from cdp_jax.agents import CONFIGS

    if not (minari_root / "cdp/test/pendulum-clean-v0").exists():
        _write_pendulum("cdp/test/pendulum-clean-v0")
    data = dm.load("cdp/test/pendulum-clean-v0")
    data = dataclasses.replace(data, actions=data.actions / 2.0)  # Pendulum's [-2, 2] -> [-1, 1]
    prepare = lambda d: training.prepare_arrays(d, agent, CONFIGS[agent](),
                                                run_config.TrainConfig(agent=agent))
    arrays, _ = prepare(data)
    assert all(np.isfinite(a).all() for a in arrays.values())

    def with_actions(**rows):
        actions = data.actions.copy()
        for row, value in rows.items():
            actions[int(row[1:]), 0] = value
        return dataclasses.replace(data, actions=actions)

    with pytest.raises(ValueError, match=r"actions hold NaN / inf in 1 episode\(s\) \(1 row\(s\)\); "
                                         r"the first is episode 0, step 4, column 0 \(value nan\)"):
        prepare(with_actions(r4=np.nan, r7=5.0))
    with pytest.raises(ValueError, match=r"actions hold \|a\| > 1 in 1 episode\(s\) .* episode 1, "
                                         r"step 2, column 0 \(value 5.0\): the diffusion policies "
                                         r"sample in \[-1, 1\]: rescale the actions first"):
        prepare(with_actions(r7=5.0))
    observations = data.observations.copy()
    observations[11, 2] = np.nan
    with pytest.raises(dm.DatasetValueError, match="observations hold NaN / inf .* episode 2, step 1"):
        prepare(dataclasses.replace(data, observations=observations))


def test_training_observations_follow_the_chosen_normalizer(minari_root):
    """``obs_normalizer="minmax"`` (the paper-il preset) puts every observation feature of the
    training windows in [-1, 1] with both ends reached; the default standardises them."""
    import dataclasses

    from cdp_jax import run_config, training
    from cdp_jax.agents import CONFIGS

    if not (minari_root / "cdp/test/pendulum-clean-v0").exists():
        _write_pendulum("cdp/test/pendulum-clean-v0")
    data = dm.load("cdp/test/pendulum-clean-v0")
    data = dataclasses.replace(data, actions=data.actions / 2.0)
    for kind in ("minmax", "gaussian"):
        config = run_config.TrainConfig(agent="dbc", obs_normalizer=kind).validate()
        arrays, norm = training.prepare_arrays(data, "dbc", CONFIGS["dbc"](), config)
        obs = arrays["observations"].reshape(-1, data.obs_dim)
        assert norm.kind == kind
        if kind == "minmax":
            np.testing.assert_allclose(obs.min(0), -1.0, atol=1e-6)
            np.testing.assert_allclose(obs.max(0), 1.0, atol=1e-6)
        else:
            assert obs.min() < -1.0 and obs.max() > 1.0
