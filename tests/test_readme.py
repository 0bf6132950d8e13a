"""The README's Python examples run as written."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# The training example, small: narrower networks, 250 steps, 2 evaluation episodes.
SHORTER = ("steps=500", 'steps=250, eval_episodes=2, eval_envs=2, agent_overrides=['
           '"actor_hidden_dim=32", "critic_hidden_dim=32", "time_dim=8"]')


def _blocks() -> tuple[list[str], str]:
    """The README's python blocks, and the one that trains (its own, slow test)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    training = [b for b in blocks if "training.train(" in b]
    assert blocks and len(training) == 1 and SHORTER[0] in training[0]
    return [b for b in blocks if b is not training[0]], training[0]


def test_readme_python_blocks_run():
    blocks, _ = _blocks()
    namespace: dict = {}
    with jax.numpy_rank_promotion("allow"):  # user code, not library internals
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["actions"].shape == (128, 6)
    assert namespace["mu"].shape == ()
    assert namespace["flow_actions"].shape == (128, 6)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(namespace["grads"]))


@pytest.mark.slow  # ~20 CPU-s, mostly compilation; test_training.py covers the loop by default
def test_readme_training_example_runs(minari_root, tmp_path, monkeypatch):
    """On a small umaze dataset in a private Minari root, in a temporary working directory."""
    from cdp_jax.data.builders import pointmaze

    _, block = _blocks()
    pointmaze.build("umaze", 1500, seed=0, dataset_id="cdp/pointmaze/umaze-v0",
                    num_reference_episodes=2)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace(*SHORTER), str(README), "exec"), namespace)  # noqa: S102
    assert namespace["summary"]["steps"] == 250 and (tmp_path / "runs" / "demo").is_dir()
    assert namespace["meta"]["step"] == 250 and namespace["config"].name == "demo"
