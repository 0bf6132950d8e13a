"""Shipped behaviour policies (``cdp_jax.data.builders.behaviour``): the SAC actor as npz, exported
from orbax snapshots and read back without pickle; a dataset built from the npz equals the one
built from the orbax snapshots, and a short one matches a recorded digest.

The policy run is faked: two orbax actor snapshots of freshly initialised actors with the default
(256-256) SAC network, laid out as ``sac_train.train`` writes them; no SAC training runs."""

import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from cdp_jax import checkpoint
from cdp_jax.agents import sac
from cdp_jax.agents.common import config_to_dict
from cdp_jax.data import minari as dm
from cdp_jax.data.builders import behaviour, locomotion

ROOT = Path(__file__).resolve().parents[1]
STEPS = 150  # per policy: medium-expert is 300 steps
EVALS = {10_000: 1000.0, 20_000: 3000.0}  # medium = the 10k snapshot (a third of 3000)
# sha256 of a 300-step medium-expert built from the npz export (seed 0, 4 envs), per CPU on which
# it was recorded (under the tests' XLA settings, conftest.py). The policies' sampled actions go
# through XLA's CPU code, whose last bits depend on the CPU (its vector instructions), and a
# rollout amplifies a last-bit difference: a new CPU adds its digest here (after checking that
# nothing else changed: the npz-equals-orbax check above holds on every machine).
DIGESTS = {
    "5341069892bd190f04425ddf1baa170d4c6caae9e597f98ce168925289779467": "previous machine, 2026-12-05",
    "9b55c4c9a6cf4e6d2458c57b676cf5a26baf8566bf068a32925e736407df5188": "AMD EPYC, 2026-12-08"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A ``locomotion-train`` directory with two actor snapshots (default SACConfig)."""
    out = tmp_path_factory.mktemp("behaviour") / "hopper"
    config = sac.default_config()
    out.mkdir()
    (out / "config.json").write_text(json.dumps(
        {"env_id": "Hopper-v5", "seed": 0, "num_steps": 20_000, "eval_every": 10_000,
         "eval_episodes": 10, "env_kwargs": {}, "dims": {"obs_dim": 11, "action_dim": 3},
         "sac": config_to_dict(config)}, indent=2))
    records = [{"env_steps": s, "return_mean": r} for s, r in EVALS.items()]
    (out / "evaluations.json").write_text(json.dumps(records))
    for i, record in enumerate(records):
        params = sac.init(jax.random.PRNGKey(i + 1), config, 11, 3).actor_params
        checkpoint.save(out / "snapshots", record["env_steps"], {"actor_params": params},
                        {"eval": record})
    return out


@pytest.fixture(scope="module")
def shipped(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "hopper"
    locomotion.export_policies("hopper", run_dir, out, num_random_episodes=3,
                               num_expert_episodes=2)
    return out


def _digest(dataset_id: str) -> str:
    data = dm.load(dataset_id)
    h = hashlib.sha256()
    for array in (data.observations, data.actions, data.rewards, data.terminals, data.timeouts):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def test_export_writes_npz_and_manifest(run_dir, shipped):
    from cdp_jax.agents import sac_train

    assert sorted(p.name for p in shipped.iterdir()) == ["expert.npz", "medium.npz",
                                                          "policies.json"]
    manifest = behaviour.read_manifest(shipped)
    assert manifest["env"] == "hopper" and manifest["env_id"] == "Hopper-v5"
    assert manifest["sac"] == {"hidden_dims": [256, 256], "log_std_min": -5.0, "log_std_max": 2.0}
    assert manifest["dims"] == {"obs_dim": 11, "action_dim": 3}
    assert behaviour.selection(shipped) == locomotion.select_policies(run_dir) == {
        "medium_step": 10_000, "medium_return": 1000.0, "expert_step": 20_000,
        "expert_return": 3000.0}
    assert manifest["reference_scores"] == json.loads(
        (run_dir / "reference_scores.json").read_text())
    for which, step in (("medium", 10_000), ("expert", 20_000)):
        entry = manifest["policies"][which]
        assert entry["sha256"] == behaviour.sha256(shipped / entry["file"])
        orbax_state, _ = sac_train.load_actor(run_dir, step)
        npz_state, loaded = behaviour.load_actor(shipped, which)
        assert loaded == entry and npz_state.config == orbax_state.config
        # parameters round-trip exactly: same paths, shapes, dtypes and bits
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                                                strict=True),
                     orbax_state.actor_params, npz_state.actor_params)
        # a plain zip of .npy members, no pickled object
        with zipfile.ZipFile(shipped / entry["file"]) as archive:
            assert all(n.endswith(".npy") for n in archive.namelist())
    # equal parameters, equal bytes (np.savez would stamp the time)
    again = locomotion.export_policies("hopper", run_dir, shipped.parent / "again",
                                       num_random_episodes=3, num_expert_episodes=2)
    assert again["policies"] == manifest["policies"]


def test_params_are_read_without_pickle(shipped, tmp_path, monkeypatch):
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(behaviour.np, "load", spy)
    behaviour.load_actor(shipped, "medium")
    assert calls == [False]
    # an object array (stored by pickle) is refused
    np.savez(tmp_path / "evil.npz", **{"params/Dense_0/kernel": np.array([{"a": 1}], object)})
    with pytest.raises(ValueError, match="pickle"):
        behaviour.load_params(tmp_path / "evil.npz")


def test_npz_route_equals_orbax_route_and_the_recorded_digest(run_dir, shipped, minari_root,
                                                              capsys):
    from cdp_jax import cli

    spec = importlib.util.spec_from_file_location("_make_dataset",
                                                  ROOT / "experiments" / "make_dataset.py")
    make_dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_dataset)
    common = ["--env", "hopper", "--kind", "medium-expert", "--steps", str(STEPS),
              "--num-envs", "4"]
    assert cli.run(make_dataset.main, ["locomotion", *common, "--policies", str(shipped),
                                       "--dataset-id", "cdp/test/from-npz-v0"]) == 0
    locomotion.build("hopper", "medium-expert", run_dir, STEPS, num_envs=4,
                     num_random_episodes=3, num_expert_episodes=2,
                     dataset_id="cdp/test/from-orbax-v0")
    locomotion.build("hopper", "medium-expert", shipped, STEPS, num_envs=4,
                     dataset_id="cdp/test/from-npz-again-v0")
    a, b = dm.load("cdp/test/from-npz-v0"), dm.load("cdp/test/from-orbax-v0")
    assert len(a) == 2 * STEPS
    for name in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), strict=True)
    assert (a.ref_min_score, a.ref_max_score) == (b.ref_min_score, b.ref_max_score)
    digest = _digest("cdp/test/from-npz-v0")
    assert digest == _digest("cdp/test/from-npz-again-v0") == _digest("cdp/test/from-orbax-v0")
    assert digest in DIGESTS, digest
    # the dataset's behaviour_policy copy is a shipped folder too
    copy = Path(dm.dataset_path("cdp/test/from-npz-v0")) / "behaviour_policy"
    assert behaviour.read_manifest(copy) == behaviour.read_manifest(shipped)


def test_errors_name_the_problem(shipped, tmp_path, minari_root):
    assert "record" not in behaviour.read_manifest(shipped)  # the faked run has no transitions.h5
    with pytest.raises(ValueError, match="medium-replay cannot be built from .* exported without"):
        locomotion.build("hopper", "medium-replay", shipped, None,
                         dataset_id="cdp/test/replay-v0")
    with pytest.raises(ValueError, match="not 'walker2d'"):
        locomotion.build("walker2d", "medium", shipped, 10, dataset_id="cdp/test/w-v0")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("policies.json", "medium.npz", "expert.npz"):
        (damaged / name).write_bytes((shipped / name).read_bytes())
    params = behaviour.load_params(damaged / "medium.npz")
    params["params"]["Dense_0"]["kernel"] = params["params"]["Dense_0"]["kernel"][:5]
    behaviour.save_params(damaged / "medium.npz", params)
    with pytest.raises(ValueError, match="sha256"):
        behaviour.load_actor(damaged, "medium")
    manifest = json.loads((damaged / "policies.json").read_text())
    manifest["policies"]["medium"]["sha256"] = behaviour.sha256(damaged / "medium.npz")
    (damaged / "policies.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        behaviour.load_actor(damaged, "medium")


def _policy(config, log_std_bias: float):
    """A SAC actor with zero mean action and a constant pre-tanh log-std (squashed: -10 gives
    the smallest, exp(-5), +10 the largest, exp(2))."""
    params = sac.init(jax.random.PRNGKey(0), config, 11, 3).actor_params
    head = params["params"]
    head["Dense_2"] = {"kernel": np.zeros((256, 3), np.float32), "bias": np.zeros(3, np.float32)}
    head["Dense_3"] = {"kernel": np.zeros((256, 3), np.float32),
                       "bias": np.full(3, log_std_bias, np.float32)}
    return params


def test_expert_by_sampled_ranks_the_pool_by_sampled_returns(tmp_path):
    """The best-evaluated snapshot is the noisy one (its sampled actions saturate at random and
    Hopper falls at once); ``expert_by="sampled"`` must pick the quiet one of the pool instead,
    and never roll out a snapshot evaluated below 90% of the best."""
    config = sac.default_config()
    out = tmp_path / "hopper"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(
        {"env_id": "Hopper-v5", "seed": 0, "num_steps": 30_000, "eval_every": 10_000,
         "eval_episodes": 10, "env_kwargs": {}, "dims": {"obs_dim": 11, "action_dim": 3},
         "sac": config_to_dict(config)}))
    evals = {10_000: 1000.0, 20_000: 2900.0, 30_000: 3000.0}
    (out / "evaluations.json").write_text(json.dumps(
        [{"env_steps": s, "return_mean": r} for s, r in evals.items()]))
    for step, bias in ((10_000, -10.0), (20_000, -10.0), (30_000, 10.0)):
        checkpoint.save(out / "snapshots", step, {"actor_params": _policy(config, bias)},
                        {"eval": {"env_steps": step, "return_mean": evals[step]}})
    assert locomotion.select_policies(out)["expert_step"] == 30_000
    seen = []
    chosen = locomotion.select_policies(out, expert_by="sampled", env="hopper",
                                        sampled_steps=3000,
                                        on_sampled=lambda *a: seen.append((a[0], a[2], a[3])))
    assert seen == [(20_000, 1, 2), (30_000, 2, 2)]
    assert chosen["expert_step"] == 20_000 and chosen["expert_return"] == 2900.0
    table = json.loads((out / "sampled_returns.json").read_text())["3000/2/10"]
    assert sorted(table) == ["20000", "30000"]
    quiet, noisy = table["20000"], table["30000"]
    assert quiet["return_mean"] > noisy["return_mean"]
    assert quiet["length_mean"] > noisy["length_mean"]
    # cached: the same answer without rolling out again
    again = locomotion.sampled_returns("hopper", out, [20_000, 30_000], num_steps=3000)
    assert again == {20_000: quiet, 30_000: noisy}
    with pytest.raises(ValueError, match="needs env="):
        locomotion.select_policies(out, expert_by="sampled")
    with pytest.raises(ValueError, match="expert_by must be one of"):
        locomotion.select_policies(out, expert_by="best")


# sha256 of a 300-step medium-expert (150 + 150 steps, seed 0, 4 envs) built from the Hopper
# policies in git, results/behaviour/hopper (medium 280k, expert 810k), per CPU as DIGESTS.
SHIPPED_HOPPER_DIGESTS = {
    "41063f770fc8f4b515e64c3d962ad20715481998f8dd5f9ba05c8f6ff7e236d1": "previous machine, 2026-12-05",
    "cbee4ec14524babae51f8c8cd1f36bba5fc253f1202a143e466ca3b2f9129cc5": "AMD EPYC, 2026-12-08"}


def test_the_shipped_hopper_policies_build_a_recorded_dataset(minari_root):
    folder = ROOT / "results" / "behaviour" / "hopper"
    manifest = behaviour.read_manifest(folder)
    assert {k: v["env_step"] for k, v in manifest["policies"].items()} == {
        "medium": 280_000, "expert": 810_000}
    summary = locomotion.build("hopper", "medium-expert", folder, STEPS, num_envs=4,
                               dataset_id="cdp/test/shipped-hopper-v0")
    assert summary["ref_max_score"] == manifest["reference_scores"]["ref_max_score"]
    assert summary["num_steps"] == 2 * STEPS
    digest = _digest("cdp/test/shipped-hopper-v0")
    assert digest in SHIPPED_HOPPER_DIGESTS, digest


def test_the_shipped_hopper_record_replays_its_first_block():
    """The shipped training record (280k steps up to the medium snapshot) regenerates its first
    10,000 steps bit for bit on this machine (the block's sha256 in the manifest)."""
    folder = ROOT / "results" / "behaviour" / "hopper"
    entry = behaviour.read_manifest(folder)["record"]
    assert (entry["env_steps"], entry["num_envs"], len(entry["block_sha256"])) == (280_000, 1, 28)
    record = locomotion.replay_record(folder, rows=entry["block_rows"])
    assert record["rewards"].shape == (10_000, 1)
    assert 0 < record["terminations"].sum() < 1_000  # short early episodes, as SAC starts


# sha256 (_digest) of cdp/hopper/medium-replay-v0 built from the shipped folder; the same from the
# run's transitions.h5 (2026-12-05).
SHIPPED_HOPPER_REPLAY_DIGEST = "6a0697bb57a946f4fe848939eff494e77ecca8ea75907158d8a7d008afcee06c"


@pytest.mark.slow
def test_the_shipped_hopper_record_builds_the_recorded_medium_replay(minari_root):
    summary = locomotion.build("hopper", "medium-replay", ROOT / "results" / "behaviour" / "hopper",
                               None, dataset_id="cdp/test/shipped-replay-v0")
    assert (summary["num_steps"], summary["num_episodes"]) == (280_000, 1505)
    assert _digest("cdp/test/shipped-replay-v0") == SHIPPED_HOPPER_REPLAY_DIGEST
