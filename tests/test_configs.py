"""The JAX-free configuration layer (cdp_jax.configs) and the command lines that rely on it.

* every name list in ``cdp_jax.configs.names`` is exactly its registry's keys;
* ``cdp_jax.configs`` (every config class, the presets) imports without JAX or flax;
* every script in experiments/ and benchmarks/ answers ``--help`` and refuses a bad value before
  it imports JAX or another heavy package (checked by making those imports fail, not by timing);
* a preset's ``updates_per_call`` is fitted to the user's cadence, and an explicit one is not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cdp_jax.configs import fields, names
from cdp_jax.configs import train as train_config

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "gymnasium", "gymnasium_robotics",
         "minari", "mujoco", "torch", "tensorboardX", "matplotlib", "h5py")

# Runs a script as __main__ with every HEAVY import failing: a script that imports one before
# it has read its arguments prints the marker (in a traceback or an error line).
_GUARDED_RUN = f"""
import runpy, sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError("HEAVY-IMPORT " + name)
sys.meta_path.insert(0, _Refuse())
sys.argv = sys.argv[1:]
sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_name_lists_are_their_registries_keys():
    from cdp_jax import chunk_networks, contraction, networks, samplers
    from cdp_jax.agents import common

    assert names.SAMPLERS == tuple(samplers.SAMPLERS)
    assert names.PENALTIES == tuple(contraction.PENALTIES)
    assert names.TARGETS == tuple(contraction.TARGETS)
    assert names.FROBENIUS_SCALES == tuple(contraction.FROBENIUS_SCALES)
    assert names.FROBENIUS_ESTIMATORS == tuple(contraction.FROBENIUS_ESTIMATORS)
    assert names.TIME_EMBEDDINGS == tuple(networks.TIME_EMBEDDINGS)
    assert names.ACTIVATIONS == tuple(networks.ACTIVATIONS)
    assert names.ACTORS == tuple(networks.ACTORS)
    assert names.CHUNK_ACTORS == tuple(chunk_networks.CHUNK_ACTORS)
    assert names.SCHEDULES == tuple(common.SCHEDULES)
    from cdp_jax import flow
    from cdp_jax.data.builders import fetch, locomotion, pointmaze

    assert names.FLOW_TARGETS == tuple(flow.TARGETS)
    assert names.FLOW_SAMPLERS == tuple(flow.FLOW_SAMPLERS)
    assert names.MAZES == tuple(pointmaze.MAZES)
    assert names.MAZE_REWARD_TYPES == tuple(pointmaze.REWARD_TYPES)
    assert names.FETCH_TASKS == tuple(fetch.TASKS)
    assert names.LOCOMOTION_ENVS == tuple(locomotion.ENVS)
    assert names.LOCOMOTION_KINDS == tuple(locomotion.KINDS)
    assert names.EXPERT_BY == tuple(locomotion.EXPERT_BY)


def test_the_agents_and_the_library_use_the_same_config_classes():
    from cdp_jax import configs, contraction, run_config
    from cdp_jax.agents import AGENTS, CONFIGS, dbc, dql, idql

    assert CONFIGS == configs.CONFIGS and set(AGENTS) == set(CONFIGS)
    assert (dql.DQLConfig, dbc.DBCConfig, idql.IDQLConfig) == (
        configs.CONFIGS["dql"], configs.CONFIGS["dbc"], configs.CONFIGS["idql"])
    assert contraction.ContractionConfig is configs.contraction.ContractionConfig
    assert run_config.TrainConfig is train_config.TrainConfig
    assert run_config.preset is train_config.preset


def test_configs_import_without_jax():
    code = (f"import sys\n{_GUARDED_RUN.split('sys.argv')[0]}\n"
            "from cdp_jax import configs, paper\nfrom cdp_jax.configs import train\n"
            "for name in train.PRESETS:\n"
            "    agent = next(k for k in train.PRESETS[name] if k != 'train')\n"
            "    train.preset(name, agent, dataset='cdp/hopper/medium-v0')\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def _scripts() -> list[Path]:
    found = []
    for folder in ("experiments", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            text = path.read_text()
            if "argparse" in text and '__name__ == "__main__"' in text:
                found.append(path)
    return found


# One bad value per script (the rest: argparse's own unknown-option error).
BAD_VALUES = {
    "train.py": [["--steps", "0"], ["--set", "foo=1"], ["--name", ""],
                 ["--contraction-weight", "nan"], ["--set", "contraction.window=inf"],
                 ["--preset", "paper", "--dataset", "nope/nothing-v0"], ["--seeds", "3-1"]],
    "evaluate.py": [["runs/x", "--episodes", "0"], ["runs/x", "--noise-temperature", "nan"]],
    "make_dataset.py": [["pointmaze", "--num-steps", "0"], ["fetch", "--task", "reach"]],
    "paper_study.py": [["--seeds", "x"], ["--budget-steps", "0"]],
    "flow_study.py": [["--alpha-steps", "0"], ["--seeds", "3-1"]],
    "run_all.py": [["--budget", "nan"]],
    "chunk_overhead.py": [["--hidden", "12"]],
    "contraction_overhead.py": [["--skip", "vanilla"]],
    "fast_penalty.py": [["--repeats", "1"]],
    "sac_throughput.py": [["--steps", "75"]],
    "sampler_throughput.py": [["--steps", "51"]],
    "scaling.py": [["--devices", "3"]],
    "side_by_side.py": [["--worker-timeout", "inf"]],
    "train_throughput.py": [["--only", "nothing"]],
}


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_answer_before_importing_jax(script):
    def run(*args):
        return subprocess.run([sys.executable, "-c", _GUARDED_RUN, str(script), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    help_ = run("--help")
    assert help_.returncode == 0 and "usage:" in help_.stdout, help_.stderr[-2000:]
    for args in [["--no-such-option"], *BAD_VALUES.get(script.name, [])]:
        out = run(*args)
        text = out.stdout + out.stderr
        assert "HEAVY-IMPORT" not in text, (args, text[-2000:])
        assert out.returncode == 2 and "error:" in text, (args, out.returncode, text[-2000:])
        assert "Traceback" not in text, (args, text[-2000:])


def test_a_presets_updates_per_call_fits_the_users_cadence(capsys):
    config, _ = train_config.preset("paper-fast", dataset="cdp/hopper/medium-replay-v0",
                                    steps=400, eval_every=200)
    assert config.updates_per_call == 200  # the preset's 1000 does not divide 400 or 200
    assert "updates_per_call 1000 -> 200" in capsys.readouterr().out
    config, _ = train_config.preset("quickstart", steps=3000, eval_every=1000)
    assert config.updates_per_call == 250 and capsys.readouterr().out == ""
    # checkpoint_every=300 and steps=900 leave 150 (the largest divisor of gcd 300 up to 250)
    config, _ = train_config.preset("quickstart", steps=900, eval_every=300, checkpoint_every=300)
    assert config.updates_per_call == 150
    with pytest.raises(ValueError, match="multiple of updates_per_call=1000"):
        train_config.preset("paper", dataset="cdp/hopper/medium-replay-v0", steps=400,
                            eval_every=200, updates_per_call=1000)


@pytest.mark.parametrize("k, cadences, expected", [
    (250, {"steps": 3000, "eval_every": 1000}, 250),
    (1000, {"steps": 400, "eval_every": 0, "checkpoint_every": 0}, 400),
    (1000, {"steps": 7, "eval_every": 0}, 7),
    (250, {"steps": 1001, "eval_every": 0}, 143),  # 1001 = 7 * 11 * 13
])
def test_fit_updates_per_call(k, cadences, expected):
    fitted, note = train_config.fit_updates_per_call(k, **cadences)
    assert fitted == expected and (note is None) == (fitted == k)
    assert all(v % fitted == 0 for v in cadences.values() if v)


def test_argparse_types_refuse_nonsense():
    import argparse

    for parse, good, bad in [(fields.positive_int, "3", ["0", "-1", "x", "1.5"]),
                             (fields.finite_float, "-2.5", ["nan", "inf", "x"]),
                             (fields.positive_float, "0.1", ["0", "-1", "inf"])]:
        parse(good)
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError):
                parse(text)
