"""Seeds as a batch axis, data / seed parallelism over (simulated) devices, accelerator hygiene.

Tolerances: a vmapped seed differs from the same seed trained alone only by the batched matmuls'
float reassociation on CPU (not bitwise: max |param diff| 0.9e-7 and 1.2e-7 after 20 steps of tiny
DQL); a data-sharded run differs from the unsharded one by the all-reduced batch means (tiny DQL on
4 devices: params 6e-8, metrics 1e-6; seeds split over 4 devices: 6e-8). Checked at
``rtol = atol = 1e-5`` (metrics of the sharded run 1e-4 absolute); the sampled batches, PRNG keys
and evaluation episodes match exactly, and a resumed vmapped run is bitwise the straight one.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from cdp_jax import contraction, multi_seed, parallel, run_config, training
from cdp_jax.agents import dql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _xla_flags(flag: str) -> str:
    """``flag`` added to the test session's XLA_FLAGS (conftest's codegen level)."""
    return f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def tiny_dql(**overrides):
    """Tiny EDP + contraction (all noise levels penalised, so the penalty is exercised)."""
    return dql.default_config(actor_hidden_dim=16, critic_hidden_dim=16, time_dim=8,
                              diffusion_steps=5, sampler_steps=2, ema_start=1, ema_every=1,
                              target_every=1, contraction=contraction.ContractionConfig(
                                  weight=0.1, window=1.0, num_iters=2), **overrides)


class LinearBC:
    """A seconds-to-compile stand-in agent (noisy linear regression of actions on observations,
    Adam): same ``init`` / ``update`` interface, batch-mean loss, randomness from the key."""

    class State(struct.PyTreeNode):
        params: dict
        opt_state: optax.OptState
        step: jax.Array

    optimizer = optax.adam(1e-2)

    @staticmethod
    def init(key, config, obs_dim, action_dim):
        params = {"w": jax.random.normal(key, (obs_dim, action_dim)) * 0.1,
                  "b": jnp.zeros((action_dim,))}
        return LinearBC.State(params, LinearBC.optimizer.init(params), jnp.zeros((), jnp.int32))

    @staticmethod
    def update(state, batch, key):
        noise = 0.1 * jax.random.normal(key, batch["actions"].shape)

        def loss_fn(params):
            pred = batch["observations"] @ params["w"] + params["b"][None, :]
            return jnp.mean(jnp.square(pred - batch["actions"] - noise))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = LinearBC.optimizer.update(grads, state.opt_state)
        params = optax.apply_updates(state.params, updates)
        return LinearBC.State(params, opt_state, state.step + 1), {"bc/loss": loss}


AGENTS = {"linear": (LinearBC, lambda: None), "dql": (dql, tiny_dql)}


def transitions(seed: int, rows: int, obs_dim: int = 3, act_dim: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
            "actions": np.tanh(rng.normal(size=(rows, act_dim))).astype(np.float32),
            "rewards": rng.normal(size=rows).astype(np.float32),
            "next_observations": rng.normal(size=(rows, obs_dim)).astype(np.float32),
            "terminals": (rng.random(rows) < 0.1).astype(np.float32)}


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_parse_seeds_and_padding():
    assert multi_seed.parse_seeds("0-3") == (0, 1, 2, 3)
    assert multi_seed.parse_seeds("0,3,5") == (0, 3, 5)
    assert multi_seed.parse_seeds("0-1,7") == (0, 1, 7)
    for bad in ("", "a-b", "1,1", "3-1"):
        with pytest.raises(ValueError, match="seeds"):
            multi_seed.parse_seeds(bad)
    stacked, counts = multi_seed.stack_padded([transitions(0, 5), transitions(1, 3)])
    assert stacked["observations"].shape == (2, 5, 3) and counts.tolist() == [5, 3]
    np.testing.assert_array_equal(stacked["actions"][1, :3], transitions(1, 3)["actions"])
    assert not stacked["rewards"][1, 3:].any()


def test_device_request_never_falls_back_silently():
    line = parallel.setup("auto")
    assert jax.default_backend() in line and str(jax.device_count()) in line
    other = "tpu" if jax.default_backend() != "tpu" else "gpu"
    with pytest.raises(RuntimeError, match=f"--device {other}"):
        parallel.setup(other)
    with pytest.raises(ValueError, match="parallel mode"):
        parallel.make_mesh("model")
    with pytest.raises(ValueError, match="batch_size=6"):
        parallel.check_divisible(parallel.make_mesh("data", jax.devices()[:1] * 4), 6,
                                 "batch_size")


@pytest.mark.parametrize("name", ["linear", pytest.param("dql", marks=pytest.mark.slow)])
def test_vmapped_seeds_equal_single_runs_without_host_transfers(name):
    """Two seeds with their own (padded) datasets in one vmapped chunk equal two single-seed
    chunks, and the chunk runs under ``jax.transfer_guard("disallow")``. ``dql``: EDP with the
    contraction penalty (~3 min on a loaded 2-core CPU, compilation)."""
    agent, make_config = AGENTS[name]
    config, steps, batch = make_config(), 3, 8
    per_seed = [transitions(0, 40), transitions(1, 27)]
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(s) for s in (0, 1)]))
    states = training.init_seeds(agent, keys[:, 0], config, 3, 2)
    stacked, counts = multi_seed.stack_padded(per_seed)
    inputs = parallel.put((states, stacked, counts, keys[:, 1]), None)  # on device once
    seeds_chunk = jax.jit(training.make_seeds_chunk(agent, steps, batch, per_seed_data=True))
    seeds_chunk.lower(*inputs).compile()
    with jax.transfer_guard("disallow"):
        batched, new_keys, metrics = seeds_chunk(*inputs)
        with pytest.raises(Exception, match="Disallowed host-to-device"):  # the guard is live
            seeds_chunk(inputs[0], stacked, inputs[2], inputs[3])
    assert all(v.shape == (2, steps) for v in metrics.values())
    if name == "dql":
        assert float(jnp.max(metrics["contraction/num_penalised"])) > 0

    single_chunk = jax.jit(training.make_train_chunk(agent, steps, batch))
    for i, seed in enumerate((0, 1)):
        # what train() does: the run's key for every chunk, sampling from its unpadded rows
        state = agent.init(keys[i, 0], config, 3, 2)
        single, single_metrics = single_chunk(state, parallel.put(per_seed[i], None), keys[i, 1])
        np.testing.assert_array_equal(keys[i, 1], new_keys[i])
        assert_trees_close(single, jax.tree.map(lambda x, i=i: x[i], batched), **TOL)
        assert_trees_close(single_metrics, jax.tree.map(lambda x, i=i: x[i], metrics), **TOL)
        assert int(single.step) == steps, seed


SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests")
from test_scaling import AGENTS, transitions
from cdp_jax import parallel, training
agent, make_config = AGENTS[sys.argv[1]]
jax.config.update("jax_numpy_rank_promotion", "raise")
assert jax.device_count() == 4, jax.devices()
config, steps, batch = make_config(), 3, 16
arrays, key = transitions(0, 64), jax.random.PRNGKey(5)
state = agent.init(jax.random.PRNGKey(0), config, 3, 2)
plain, plain_metrics = jax.jit(training.make_train_chunk(agent, steps, batch))(
    state, parallel.put(arrays, None), key)
mesh = parallel.make_mesh("data")
rep = parallel.replicated(mesh)
chunk = jax.jit(training.make_train_chunk(agent, steps, batch, parallel.batch_axis(mesh)),
                out_shardings=rep)
args = parallel.put((state, arrays, key), rep)
hlo = chunk.lower(*args).compile().as_text()
sharded, metrics = chunk(*args)
diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
out = {"data_param_diff": diff(plain, sharded), "data_metric_diff": diff(plain_metrics, metrics),
       "all_reduce": "all-reduce" in hlo,
       "state_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded)),
       "data_devices": len(jax.tree.leaves(sharded)[0].sharding.device_set)}

# 4 seeds, one per device, shared data: equal to the same vmapped program on one device
keys = jax.random.split(jax.random.PRNGKey(1), 4)
states = training.init_seeds(agent, keys, config, 3, 2)
seeds_chunk = training.make_seeds_chunk(agent, steps, batch, per_seed_data=False)
rows = np.int32(64)
one = jax.jit(seeds_chunk)(states, parallel.put(arrays, None), rows, keys)
smesh = parallel.make_mesh("seeds")
lead = parallel.leading(smesh)
states_s, keys_s = parallel.put((states, keys), lead)
arrays_s, rows_s = parallel.put((arrays, rows), parallel.replicated(smesh))
sharded_seeds = jax.jit(seeds_chunk, out_shardings=lead)(states_s, arrays_s, rows_s, keys_s)
out["seeds_param_diff"] = diff(one[0], sharded_seeds[0])
out["seeds_shards"] = len(jax.tree.leaves(sharded_seeds[0])[0].addressable_shards)
print("RESULT" + json.dumps(out))
"""


# four simulated devices in a subprocess: slow (the vmapped-seeds test keeps the default run's
# coverage of seeds in one program)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear", "dql"])
def test_data_and_seed_sharding_on_four_simulated_devices(name):
    """``--parallel data`` (batch split over 4 devices, state replicated, gradients all-reduced)
    and ``--parallel seeds`` (4 seeds, one per device) equal the unsharded programs."""
    env = {**os.environ, "XLA_FLAGS": _xla_flags("--xla_force_host_platform_device_count=4"),
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, name], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT")[-1])
    assert result["all_reduce"] and result["state_replicated"] and result["data_devices"] == 4
    assert result["data_param_diff"] < 1e-5 and result["data_metric_diff"] < 1e-4, result
    assert result["seeds_shards"] == 4 and result["seeds_param_diff"] < 1e-5, result


@pytest.mark.slow  # three DQL compilations and three evaluations: ~3 min on a loaded 2-core CPU
def test_train_seeds_writes_what_separate_runs_write(tmp_path, monkeypatch):
    """``train_seeds`` with a fraction (own episodes and normaliser per seed) equals ``train`` of
    each seed: parameters within 1e-5, the same evaluation episodes and returns, same outputs."""
    from cdp_jax import checkpoint
    from cdp_jax.data.builders import pointmaze

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    pointmaze.build("umaze", num_steps=3000, seed=0, dataset_id="cdp/pointmaze/tiny-v0",
                    num_reference_episodes=2)
    config = run_config.TrainConfig(
        name="seeds", dataset="cdp/pointmaze/tiny-v0", steps=20, batch_size=16,
        updates_per_call=10, eval_every=20, eval_episodes=3, eval_envs=2, checkpoint_every=10,
        fraction=0.5, run_dir=str(tmp_path / "multi"), progress=False)
    agent_config = tiny_dql()
    summary = multi_seed.train_seeds(config, agent_config, (0, 3))
    assert json.loads((tmp_path / "multi" / "seeds.json").read_text())["seeds"] == [0, 3]
    assert summary["last_mean"] is not None
    for seed in (0, 3):
        single_dir = tmp_path / f"single{seed}"
        training.train(dataclasses.replace(config, seed=seed, run_dir=str(single_dir)),
                       agent_config)
        multi_dir = tmp_path / "multi" / f"seed_{seed}"
        assert checkpoint.list_steps(multi_dir / "checkpoints") == [10, 20]
        a, b = run_config.load_policy(multi_dir), run_config.load_policy(single_dir)
        assert a[0].seed == seed and a[3].to_dict() == b[3].to_dict()
        assert_trees_close(a[2], b[2], **TOL)
        eval_a = json.loads((multi_dir / "eval.json").read_text())["evaluations"]
        eval_b = json.loads((single_dir / "eval.json").read_text())["evaluations"]
        assert [e["returns"] for e in eval_a] == [e["returns"] for e in eval_b]
        assert len(eval_a[0]["returns"]) == 3


@pytest.mark.slow  # two vmapped DQL runs: ~3 min on a loaded 2-core CPU
def test_train_seeds_resumes_exactly(tmp_path, monkeypatch):
    """Seeds interrupted after their first checkpoint and resumed equal the straight run
    bitwise (both vmapped), per seed: state, metrics.csv and evaluations."""
    from cdp_jax import checkpoint
    from cdp_jax.data.builders import pointmaze

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    pointmaze.build("umaze", num_steps=3000, seed=0, dataset_id="cdp/pointmaze/tiny-v0",
                    num_reference_episodes=2)
    config = run_config.TrainConfig(
        name="seeds", dataset="cdp/pointmaze/tiny-v0", steps=20, batch_size=16,
        updates_per_call=10, eval_every=10, eval_episodes=2, eval_envs=2, checkpoint_every=10,
        run_dir=str(tmp_path / "straight"), progress=False)
    multi_seed.train_seeds(config, tiny_dql(), (1, 2))
    interrupted = dataclasses.replace(config, run_dir=str(tmp_path / "resumed"))
    real_save = checkpoint.CheckpointManager.save
    saved = []

    def save_then_die(self, step, *args, **kwargs):
        real_save(self, step, *args, **kwargs)
        saved.append(step)
        if len(saved) == 2:  # both seeds' first checkpoint written
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.CheckpointManager, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        multi_seed.train_seeds(interrupted, tiny_dql(), (1, 2))
    monkeypatch.setattr(checkpoint.CheckpointManager, "save", real_save)
    multi_seed.train_seeds(dataclasses.replace(interrupted, resume=True), tiny_dql(), (1, 2))
    for seed in (1, 2):
        a = run_config.load_policy(tmp_path / "straight" / f"seed_{seed}")[2]
        b = run_config.load_policy(tmp_path / "resumed" / f"seed_{seed}")[2]
        assert int(a.step) == int(b.step) == 20
        assert_trees_close(a, b, rtol=0, atol=0)
        rows = [(tmp_path / run / f"seed_{seed}" / "metrics.csv").read_text().splitlines()
                for run in ("straight", "resumed")]
        strip = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # drop time/steps_per_s
        assert strip(rows[0]) == strip(rows[1])
        evals = [[{k: v for k, v in e.items() if k != "timing"}  # not the wall-clock timing
                  for e in json.loads((tmp_path / run / f"seed_{seed}" / "eval.json")
                                      .read_text())["evaluations"]] for run in ("straight", "resumed")]
        assert evals[0] == evals[1]


@pytest.mark.slow
def test_distributed_initialize_single_process_same_code_path():
    """``--distributed`` on one process (manual launch variables): the mesh spans the global
    devices and a data-parallel chunk runs as on one host."""
    script = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "import jax, numpy as np\n"
        "from test_scaling import LinearBC, transitions\n"
        "from cdp_jax import parallel, training\n"
        "print(parallel.setup('cpu', distributed=True))\n"
        "mesh = parallel.make_mesh('data'); rep = parallel.replicated(mesh)\n"
        "state = LinearBC.init(jax.random.PRNGKey(0), None, 3, 2)\n"
        "chunk = jax.jit(training.make_train_chunk(LinearBC, 2, 8, parallel.batch_axis(mesh)),\n"
        "                out_shardings=rep)\n"
        "out, metrics = chunk(*parallel.put((state, transitions(0, 32), jax.random.PRNGKey(1)), rep))\n"
        "print('LOSS', parallel.to_host(metrics)['bc/loss'].shape, jax.process_count())\n")
    env = {**os.environ, "XLA_FLAGS": _xla_flags("--xla_force_host_platform_device_count=2"),
           "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}",
           "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "process 0 of 1; 2 device(s)" in out.stdout and "LOSS (2,) 1" in out.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]
