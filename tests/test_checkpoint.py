"""Checkpoints: bitwise round trip, never overwritten, clear errors, last N + best kept."""

import jax
import jax.numpy as jnp
import pytest

from cdp_jax import checkpoint
from cdp_jax.agents import dql

CONFIG = dql.default_config(actor_hidden_dim=16, critic_hidden_dim=16, time_dim=8,
                            diffusion_steps=5, sampler_steps=2, lr_decay_steps=100,
                            max_grad_norm=1.0)


def _tree(seed=0, step=7):
    state = dql.init(jax.random.PRNGKey(seed), CONFIG, 3, 2)
    return {"state": state.replace(step=jnp.asarray(step, jnp.int32)),
            "rng": jax.random.PRNGKey(seed + 100)}


def _equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                           strict=True))


def test_round_trip_is_bitwise(tmp_path):
    tree = _tree()
    checkpoint.save(tmp_path, 7, tree, {"normalizer": {"kind": "gaussian"}})
    restored, meta = checkpoint.restore(tmp_path, _tree(seed=1, step=0))
    assert _equal(restored, tree)
    assert int(restored["state"].step) == 7
    assert meta["step"] == 7 and meta["normalizer"] == {"kind": "gaussian"}
    assert restored["state"].config == CONFIG  # static fields come from the target


def test_never_overwrites(tmp_path):
    checkpoint.save(tmp_path, 5, _tree(), {})
    with pytest.raises(checkpoint.CheckpointError, match="refusing to overwrite"):
        checkpoint.save(tmp_path, 5, _tree(seed=3), {})
    restored, _ = checkpoint.restore(tmp_path, _tree(seed=1))
    assert _equal(restored, _tree())


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found"):
        checkpoint.restore(tmp_path / "nothing", _tree())
    checkpoint.save(tmp_path, 1, _tree(), {})
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint for step 2"):
        checkpoint.restore(tmp_path, _tree(), step=2)


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    checkpoint.save(tmp_path, 1, _tree(), {})
    checkpoint.save(tmp_path, 2, _tree(), {})
    state_dir = checkpoint.step_dir(tmp_path, 2) / "state"
    for path in state_dir.rglob("*"):
        if path.is_file() and path.name != "_CHECKPOINT_METADATA":
            path.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupted.*Other checkpoints: \\[1\\]"):
        checkpoint.restore(tmp_path, _tree())
    restored, _ = checkpoint.restore(tmp_path, _tree(seed=4), step=1)  # the good one still loads
    assert _equal(restored, _tree())


def test_incompatible_target_is_a_clear_error(tmp_path):
    checkpoint.save(tmp_path, 1, _tree(), {})
    other = dql.init(jax.random.PRNGKey(0), CONFIG, 4, 2)  # different obs_dim
    with pytest.raises(checkpoint.CheckpointError, match="incompatible"):
        checkpoint.restore(tmp_path, {"state": other, "rng": jax.random.PRNGKey(0)})


def test_manager_keeps_last_n_and_best(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path, keep=2)
    tree = _tree()
    for step, score in [(1, 5.0), (2, 1.0), (3, None), (4, 2.0)]:
        manager.save(step, tree, {}, score=score)
    assert checkpoint.list_steps(tmp_path) == [1, 3, 4]
    assert manager.best == {"step": 1, "score": 5.0}
    assert manager.latest_step() == 4
    manager.save(5, tree, {}, score=9.0)
    assert checkpoint.list_steps(tmp_path) == [4, 5]
    assert manager.best["step"] == 5
