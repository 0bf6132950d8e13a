"""Checkpoints: bitwise round trip, never overwritten, clear errors, last N + best kept."""

import subprocess
import sys

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


def _largest_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def test_damaged_files_are_named_before_orbax_reads_them(tmp_path):
    checkpoint.save(tmp_path, 1, _tree(), {})
    checkpoint.save(tmp_path, 2, _tree(), {})
    data = _largest_file(checkpoint.step_dir(tmp_path, 2))
    name = str(data.relative_to(checkpoint.step_dir(tmp_path, 2)))
    original = data.read_bytes()

    data.write_bytes(original[:100])  # truncated
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"damaged: {name} has 100 bytes where {len(original)} were written"
                             ".*Other checkpoints: \\[1\\]"):
        checkpoint.restore(tmp_path, _tree())
    data.write_bytes(original[:-8] + bytes(8))  # garbled, same size
    with pytest.raises(checkpoint.CheckpointError, match=f"{name} does not match its SHA-256"):
        checkpoint.restore(tmp_path, _tree())
    data.unlink()
    with pytest.raises(checkpoint.CheckpointError, match=f"{name} is missing"):
        checkpoint.restore(tmp_path, _tree())
    data.write_bytes(original)
    restored, _ = checkpoint.restore(tmp_path, _tree(seed=4))
    assert _equal(restored, _tree())


def test_broken_meta_json_is_a_checkpoint_error(tmp_path):
    checkpoint.save(tmp_path, 3, _tree(), {})
    (checkpoint.step_dir(tmp_path, 3) / "meta.json").write_text('{"step": 3, "normal')
    with pytest.raises(checkpoint.CheckpointError, match="step_000000003 is damaged: cannot read "
                                                         "meta.json.*No other checkpoint"):
        checkpoint.read_meta(tmp_path, 3)
    with pytest.raises(checkpoint.CheckpointError, match="cannot read meta.json"):
        checkpoint.restore(tmp_path, _tree())


def test_discard_after_moves_later_checkpoints_aside(tmp_path):
    manager = checkpoint.CheckpointManager(tmp_path, keep=5)
    for step, score in [(1, 1.0), (2, 3.0), (3, 9.0), (4, None)]:
        manager.save(step, _tree(), {}, score=score)
    assert manager.best["step"] == 3
    assert manager.discard_after(2) == [3, 4]
    assert checkpoint.list_steps(tmp_path) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "discarded").iterdir()) == [
        "step_000000003", "step_000000004"]
    assert manager.best == {"step": 2, "score": 3.0}
    manager.save(3, _tree(), {}, score=0.5)  # the resumed run writes its own step 3
    manager.discard_after(2)
    assert (tmp_path / "discarded" / "step_000000003.1").is_dir()  # nothing overwritten


def test_a_failed_orbax_restore_ends_with_its_error(tmp_path):
    """A damaged checkpoint without recorded hashes (written before they were): orbax fails and
    abandons reads that used to print dozens of 'Event loop is closed' tracebacks at exit, after
    the real error."""
    script = f"""
import jax
from cdp_jax import checkpoint, files
from cdp_jax.agents import dql
cfg = dql.default_config(actor_hidden_dim=64, critic_hidden_dim=64, time_dim=8,
                         diffusion_steps=5, sampler_steps=2)
tree = {{"state": dql.init(jax.random.PRNGKey(0), cfg, 3, 2), "rng": jax.random.PRNGKey(1)}}
path = checkpoint.save({str(tmp_path)!r}, 1, tree, {{}})
meta = checkpoint.read_meta({str(tmp_path)!r}, 1)
del meta["files"]
files.write_json(path / "meta.json", meta)
data = max((p for p in (path / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
data.write_bytes(data.read_bytes()[:1000])
try:
    checkpoint.restore({str(tmp_path)!r}, tree)
except checkpoint.CheckpointError as err:
    print("error:", err, flush=True)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "error: checkpoint" in out.stdout and "corrupted" in out.stdout
    assert "Event loop is closed" not in out.stderr and "Traceback" not in out.stderr
