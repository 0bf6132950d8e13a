"""Measure how far cdp_jax's defaults are from the official pipeline, option by option.

Uses the official weights and inputs of the parity fixtures (tests/fixtures/parity), float64.
Prints one line per measured quirk; the numbers are quoted in docs/PARITY.md.

    python tools/parity_effects.py
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from cdp_jax import contraction, networks, official, paper, schedules  # noqa: E402
from cdp_jax.agents import dql  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity"


def weights(data, prefix):
    names, shapes = data[f"{prefix}__names"], data[f"{prefix}__shapes"]
    seed = int(data[f"{prefix}__seed"])
    return {str(n): data[f"{prefix}__offsets"][i] + data[f"{prefix}__scales"][i]
            * np.random.default_rng([seed, i]).standard_normal(tuple(int(k) for k in str(s).split("x")))
            for i, (n, s) in enumerate(zip(names, shapes, strict=True))}


def main():
    ddpm, cd = schedules.cosine(50), schedules.cosine(50, discretization="cleandiffuser")
    idx = np.arange(50)
    print(f"schedule: sigma_0 {ddpm.sigma(0):.4f} (ddpm) vs {cd.sigma(0):.5f} (cleandiffuser); "
          f"max |log-SNR difference| {np.max(np.abs(ddpm.log_snr(idx) - cd.log_snr(idx))):.2f}")

    emb = networks.PositionalEmbedding(64, integer_t=True).apply({}, jnp.array([3, 47]))
    print(f"integer-t embedding: max |emb(3) - emb(47)| = {float(jnp.max(jnp.abs(emb[0] - emb[1]))):.3f}")

    data = dict(np.load(FIXTURES / "samplers.npz"))
    params = official.dqlmlp_params(weights(data, "actor"))
    obs, noise = jnp.asarray(data["sampler_obs"]), jnp.asarray(data["xT_2M_0.5"])
    official_cfg = dql.default_config(**paper.PAPER_RL)
    runs = {"official": official_cfg,
            "grid only changed": dql.default_config(**{**paper.PAPER_RL, "sampler_spacing": "uniform"}),
            "schedule only changed": dql.default_config(**{**paper.PAPER_RL,
                                                           "schedule_discretization": "ddpm"})}
    ref = dql.sample_actions(official_cfg, params, obs, None, 3, temperature=0.5, noise=noise)
    for name, cfg in list(runs.items())[1:]:
        out = dql.sample_actions(cfg, params, obs, None, 3, temperature=0.5, noise=noise)
        diff = np.abs(np.asarray(out - ref))
        print(f"sampler, same network and x_T, {name}: |action difference| mean {diff.mean():.3f}, "
              f"max {diff.max():.3f}")

    step = dict(np.load(FIXTURES / "rl_step.npz"))
    actor = networks.DQLActor(time_embedding="positional_integer_t")
    params = official.dqlmlp_params(weights(step, "actor"))
    t, eps = jnp.asarray(step["draw0_edp_t"], jnp.int32), jnp.asarray(step["draw0_edp_eps"])
    act, o = jnp.asarray(step["batch0_act"]), jnp.asarray(step["batch0_obs"])
    x = cd.alpha(t)[:, None] * act + cd.sigma(t)[:, None] * eps
    den = lambda xx, tt, c: actor.apply(params, xx, tt, c)
    pen = {}
    for name, cfg in {"official mean((J_sym + 0.1 I)^2)": paper.PAPER_PENALTY,
                      "default eigen hinge relu(mu + 0.1)^2": contraction.ContractionConfig(
                          weight=1.0, num_penalised=1.0)}.items():
        cfg = cfg if cfg.weight == 1.0 else contraction.ContractionConfig(
            **{**cfg.__dict__, "weight": 1.0})
        loss, _ = contraction.contraction_regulariser(cfg, den, cd, x, t, o, jax.random.PRNGKey(0),
                                                      prediction="x0")
        pen[name] = float(loss)
    a, b = pen.values()
    print("penalty on the same in-window samples: " + ", ".join(f"{k} {v:.4g}" for k, v in pen.items())
          + f" (ratio {a / b:.1f})")


if __name__ == "__main__":
    main()
