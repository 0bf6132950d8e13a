"""Locomotion builders (D4RL recipe) on a briefly trained Hopper-v5 SAC run, in a temporary
MINARI_DATASETS_PATH. The run is tiny (2000 env steps, 64-unit networks): its "expert" is weak, but
the recipe, the episode structure and the reference scores are exercised end to end."""

import json
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from cdp_jax.agents import sac, sac_train
from cdp_jax.data import minari as dm
from cdp_jax.data.builders import behaviour, locomotion

STEPS = 600  # per policy


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("behaviour") / "hopper"
    config = sac.default_config(hidden_dims=(64, 64), batch_size=64, learning_starts=500)
    locomotion.train_behaviour("hopper", out, 2000, seed=0, config=config, eval_every=500,
                               eval_episodes=3)
    return out


@pytest.fixture(scope="module")
def built(minari_root, policy_dir):
    kw = dict(num_envs=4, num_random_episodes=30, num_expert_episodes=3)
    return {kind: locomotion.build("hopper", kind, policy_dir, STEPS, seed=0, **kw)
            for kind in locomotion.KINDS}


def test_selection_follows_d4rl(policy_dir):
    evals = {e["env_steps"]: e["return_mean"]
             for e in json.loads((policy_dir / "evaluations.json").read_text())}
    sel = locomotion.select_policies(policy_dir)
    assert sel["expert_return"] == max(evals.values())
    target = sel["expert_return"] / 3
    near = [s for s in sorted(evals) if abs(evals[s] - target) <= 0.1 * target]
    if near:  # D4RL's early stop: the first snapshot at the medium level
        assert sel["medium_step"] == near[0]
    else:
        assert all(abs(evals[sel["medium_step"]] - target) <= abs(r - target)
                   for s, r in evals.items() if s <= sel["expert_step"])
    forced = locomotion.select_policies(policy_dir, medium_step=500, expert_step=1000)
    assert (forced["medium_step"], forced["expert_step"]) == (500, 1000)
    with pytest.raises(ValueError, match="no snapshot"):
        locomotion.select_policies(policy_dir, medium_step=123)


def test_medium_is_where_the_run_first_reaches_a_third_of_the_expert(tmp_path):
    """A run that reaches the medium level, goes on to expert level and falls back to the medium
    level later: the medium policy (and the end of medium-replay) is the first visit."""
    evals = [(10, 100.0), (20, 1014.0), (30, 1881.0), (40, 3300.0), (50, 1105.0), (60, 2500.0)]
    (tmp_path / "evaluations.json").write_text(json.dumps(
        [{"env_steps": s, "return_mean": r} for s, r in evals]))
    sel = locomotion.select_policies(tmp_path)
    assert (sel["medium_step"], sel["expert_step"]) == (20, 40)
    # Nothing within 10% of a third of the expert: the closest snapshot, no later than the expert.
    (tmp_path / "evaluations.json").write_text(json.dumps(
        [{"env_steps": s, "return_mean": r} for s, r in [(10, 100.0), (20, 700.0), (30, 3000.0),
                                                          (40, 1000.0)]]))
    assert locomotion.select_policies(tmp_path)["medium_step"] == 20


def test_datasets_round_trip(built, policy_dir):
    sel = locomotion.select_policies(policy_dir)
    sizes = {"medium": STEPS, "expert": STEPS, "medium-expert": 2 * STEPS,
             "medium-replay": sel["medium_step"]}
    for kind, summary in built.items():
        data = dm.load(f"cdp/hopper/{kind}-v0")
        assert len(data) == summary["num_steps"] == sizes[kind], kind
        assert data.num_episodes == summary["num_episodes"]
        assert data.observations.shape == (len(data), 11) and data.actions.shape == (len(data), 3)
        assert (data.ref_min_score, data.ref_max_score) == (summary["ref_min_score"],
                                                            summary["ref_max_score"])
        assert data.ref_max_score > data.ref_min_score
        assert json.loads(data.eval_env_spec)["id"] == "Hopper-v5"
        # Exactly one of terminal / timeout at every episode end, nowhere else.
        ends = np.flatnonzero(np.diff(data.episode_ids, append=-1) != 0)
        flags = data.terminals + data.timeouts
        assert np.all(flags[ends] == 1) and flags.sum() == ends.size
        saved = Path(dm.dataset_path(f"cdp/hopper/{kind}-v0")) / "behaviour_policy"
        assert (saved / "selection.json").exists() and (saved / "config.json").exists()


def test_episodes_end_where_the_env_ended(built):
    """Replaying a recorded episode's actions from its reset seed reproduces its observations and
    ends (terminated or truncated) exactly where the dataset says."""
    import minari

    ds = minari.load_dataset("cdp/hopper/medium-v0")
    checked = 0
    metadata = ds.storage.get_episode_metadata(ds.episode_indices)
    for ep, meta in zip(ds.storage.get_episodes(ds.episode_indices), metadata, strict=True):
        if meta.get("seed") is None:  # only the first episode of each env was reset with a seed
            continue
        env = gym.make("Hopper-v5")
        obs, _ = env.reset(seed=meta["seed"])
        np.testing.assert_allclose(obs, ep["observations"][0])
        for t, action in enumerate(ep["actions"]):
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_allclose(obs, ep["observations"][t + 1], rtol=1e-6, atol=1e-8)
            assert reward == pytest.approx(ep["rewards"][t])
            assert terminated == ep["terminations"][t]
            if t < len(ep["actions"]) - 1:
                assert not (terminated or truncated)
        checked += 1
        env.close()
    assert checked == 4


def test_normalised_scores_expert_100_random_0(built, policy_dir):
    data = dm.load("cdp/hopper/expert-v0")
    sel = locomotion.select_policies(policy_dir)
    state, _ = sac_train.load_actor(policy_dir, sel["expert_step"])
    expert = sac_train.evaluate_policy(state, "Hopper-v5", 5, seed=777)["returns"]
    random_returns = locomotion._episode_returns(None, "hopper", 30, seed=777)
    assert abs(dm.normalized_score(data, expert).mean() - 100.0) < 10.0
    assert abs(dm.normalized_score(data, random_returns).mean()) < 25.0


def test_deterministic_and_rebuildable_from_the_saved_policies(built, policy_dir):
    kw = dict(num_envs=4, num_random_episodes=30, num_expert_episodes=3)
    again = locomotion.build("hopper", "medium", policy_dir, STEPS, seed=0,
                             dataset_id="cdp/test/medium-again-v0", **kw)
    other = locomotion.build("hopper", "medium", policy_dir, STEPS, seed=1,
                             dataset_id="cdp/test/medium-seed1-v0", **kw)
    copy = Path(dm.dataset_path("cdp/hopper/expert-v0")) / "behaviour_policy"
    rebuilt = locomotion.build("hopper", "expert", copy, STEPS, seed=0,
                               dataset_id="cdp/test/expert-rebuilt-v0", **kw)
    assert rebuilt["ref_max_score"] == built["expert"]["ref_max_score"]
    a, b, c = (dm.load(i) for i in ("cdp/hopper/medium-v0", again["dataset_id"],
                                    other["dataset_id"]))
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.observations.shape != c.observations.shape or not np.array_equal(a.actions, c.actions)
    e, r = dm.load("cdp/hopper/expert-v0"), dm.load(rebuilt["dataset_id"])
    np.testing.assert_array_equal(e.actions, r.actions)
    with pytest.raises(FileNotFoundError, match="transitions.h5"):
        locomotion.build("hopper", "medium-replay", copy, None,
                         dataset_id="cdp/test/replay-from-copy-v0", **kw)


def test_medium_replay_is_the_training_record(built, policy_dir):
    data = dm.load("cdp/hopper/medium-replay-v0")
    with h5py.File(policy_dir / "transitions.h5") as f:
        n = len(data)
        np.testing.assert_array_equal(data.observations, f["observations"][:n, 0]
                                      .astype(np.float32))
        np.testing.assert_array_equal(data.actions, f["actions"][:n, 0].astype(np.float32))
        np.testing.assert_array_equal(data.terminals, f["terminations"][:n, 0])


def test_a_shipped_record_regenerates_a_resumed_run_bit_for_bit(tmp_path, minari_root,
                                                                 monkeypatch):
    """export_policies ships the training record up to the medium snapshot as its actions; the
    replay resets the envs where the run did (its start and its resume) and regenerates
    transitions.h5 exactly, so medium-replay from the shipped folder equals the run's. A changed
    action is caught by the block digests, which name where the replay parts from the record."""
    run, out = tmp_path / "run", tmp_path / "shipped"
    config = sac.default_config(hidden_dims=(16,), batch_size=32, learning_starts=200,
                                num_envs=2)
    locomotion.train_behaviour("hopper", run, 600, seed=4, config=config, eval_every=300,
                               eval_episodes=1)
    locomotion.train_behaviour("hopper", run, 1200, seed=4, config=config, eval_every=300,
                               eval_episodes=1, resume=True)
    monkeypatch.setattr(behaviour, "RECORD_BLOCK", 100)  # rows per digest: 4.5 blocks here
    ticks = []
    manifest = locomotion.export_policies("hopper", run, out, medium_step=900, expert_step=1200,
                                          num_random_episodes=2, num_expert_episodes=1,
                                          progress=ticks.append)
    entry = {**manifest["record"]}
    assert (entry["env_steps"], entry["rows"], entry["num_envs"]) == (900, 450, 2)
    assert [r["row"] for r in entry["resets"]] == [0, 300]  # the start, and the resume at 600
    assert len(entry["block_sha256"]) == 5 and sum(ticks) == 900
    replayed = locomotion.replay_record(out)
    with h5py.File(run / "transitions.h5") as f:
        for k, v in replayed.items():
            np.testing.assert_array_equal(v, f[k][:450], err_msg=k)
    a = locomotion.replay_episodes(run, 900)
    b = locomotion.replay_episodes(out, 900)
    assert len(a) == len(b) > 4
    for x, y in zip(a, b, strict=True):
        for k in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(x[k], y[k])
    summary = locomotion.build("hopper", "medium-replay", out, None,
                               dataset_id="cdp/test/replay-shipped-v0")
    assert summary["num_steps"] == 900
    copy = Path(summary["path"]) / "behaviour_policy"  # a shipped folder, record included
    assert behaviour.read_manifest(copy) == manifest and (copy / behaviour.RECORD).exists()
    # One action changed at row 250 (env step 500, block 2: steps 400-600) parts the replay there.
    packed = dict(np.load(out / behaviour.RECORD))
    packed["actions"][250, 1, 0] += 0.25
    manifest["record"]["sha256"] = behaviour.save_arrays(out / behaviour.RECORD, packed)
    (out / behaviour.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="from env step 400 on .block 2"):
        locomotion.replay_record(out)
    locomotion.replay_record(out, rows=200)  # the blocks before it still match
    (out / behaviour.MANIFEST).write_text(json.dumps({**manifest, "record": entry}))
    with pytest.raises(ValueError, match="sha256"):
        locomotion.replay_record(out)
    assert "record" not in locomotion.export_policies(
        "hopper", run, out, medium_step=900, expert_step=1200, record=False)


def test_record_actions_pack_exactly():
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-1, 1, (5, 2, 3)),  # float64 warm-up actions
                              rng.uniform(-1, 1, (7, 2, 3)).astype(np.float32)])
    packed = behaviour.pack_actions(actions)
    assert packed["actions"].dtype == np.float32 and packed["exact_index"].size == 30
    np.testing.assert_array_equal(behaviour.unpack_actions(packed), actions)


def test_medium_datasets_from_the_start_of_a_run_and_a_reference(built, policy_dir, tmp_path):
    """A run cut short before its expert builds medium and medium-replay with a reference record
    of the full run: the record's expert return sets the medium target, its scores normalise; the
    medium-replay is the same training record as the full recipe's when the medium step agrees."""
    evals = {e["env_steps"]: e["return_mean"]
             for e in json.loads((policy_dir / "evaluations.json").read_text())}
    medium = built["medium-replay"]["medium_step"]
    record = {"env": "hopper", "expert_step": 10**6, "expert_return": 3.0 * evals[medium],
              "ref_min_score": -5.0, "ref_max_score": 500.0, "num_random_episodes": 100,
              "num_expert_episodes": 10, "source": "a test record"}
    path = tmp_path / "hopper.json"
    path.write_text(json.dumps(record))
    reference = locomotion.load_reference(path, "hopper")
    target = evals[medium]
    first = min(s for s in evals if abs(evals[s] - target) <= 0.1 * target)
    sel = locomotion.select_policies(policy_dir, reference=reference)
    assert (sel["medium_step"], sel["expert_step"], sel["expert_return"]) == (
        first, 10**6, 3.0 * evals[medium])
    kw = dict(num_envs=4, reference=reference)
    replay = locomotion.build("hopper", "medium-replay", policy_dir, None,
                              dataset_id="cdp/test/replay-ref-v0", **kw)
    locomotion.build("hopper", "medium", policy_dir, STEPS, dataset_id="cdp/test/medium-ref-v0",
                     **kw)
    for dataset_id in ("cdp/test/replay-ref-v0", "cdp/test/medium-ref-v0"):
        data = dm.load(dataset_id)
        assert (data.ref_min_score, data.ref_max_score) == (-5.0, 500.0)
        copy = Path(dm.dataset_path(dataset_id)) / "behaviour_policy"
        assert [p.name for p in (copy / "snapshots").iterdir()] == [f"step_{first:09d}"]
    assert replay["medium_step"] == first
    if first == medium:
        np.testing.assert_array_equal(dm.load("cdp/test/replay-ref-v0").actions,
                                      dm.load("cdp/hopper/medium-replay-v0").actions)
    with pytest.raises(ValueError, match="needs the expert snapshot"):
        locomotion.build("hopper", "expert", policy_dir, STEPS, dataset_id="cdp/test/x-v0", **kw)
    with pytest.raises(ValueError, match="not 'walker2d'"):
        locomotion.load_reference(path, "walker2d")
    path.write_text(json.dumps({"env": "hopper"}))
    with pytest.raises(ValueError, match="needs expert_step"):
        locomotion.load_reference(path, "hopper")
    # the record the paper study's Hopper datasets were rebuilt with is well formed
    locomotion.load_reference(Path(__file__).resolve().parents[1] / "results" / "behaviour"
                              / "hopper.json", "hopper")


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected one of"):
        locomotion.default_dataset_id("ant", "medium")
    with pytest.raises(ValueError, match="expected one of"):
        locomotion.default_dataset_id("hopper", "random")


@pytest.mark.slow
def test_paper_study_hopper_cell_end_to_end(built, minari_root, tmp_path, monkeypatch):
    """The paper study's Hopper medium-replay cell (``--preset paper``: official hopper row, 100
    candidates, 1000-step episodes, normalised by the dataset's own reference scores) trains,
    evaluates and is diagnosed on the locally built dataset: what the unattended study will run."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import paper_study  # noqa: PLC0415

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    out = tmp_path / "results"
    argv = ["--quick", "--study", "rl", "--tasks", "hopper-mr", "--cells", "rl_hopper-mr_f100_cdp",
            "--runs-root", str(tmp_path / "runs"), "--out", str(out)]
    assert paper_study.main(argv) == 0
    cell = json.loads((out / "rl.json").read_text())["cells"]["rl_hopper-mr_f100_cdp"]
    assert cell["protocol"]["candidates"] == 100 and cell["protocol"]["eval_every"] == 20
    for seed in cell["seeds"].values():
        assert np.isfinite(seed["last"]["normalized_score"])
        assert seed["diagnostics"] is not None
