"""The names every config field may take, without JAX.

The registries that map these names to code (samplers, networks, penalties, ...) live in the JAX
modules; the configs validate against the names here, so a command line can refuse a bad name
before it imports JAX. ``tests/test_configs.py`` checks that each tuple below lists exactly its
registry's keys; the plain tuples (no registry behind them) are imported from here by their
modules.
"""

# Registries (the key order of the dict they name).
SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp_1s", "dpm_solver_pp_2m", "euler_maruyama", "heun")
"""``cdp_jax.samplers.SAMPLERS``."""
PENALTIES = ("eigen", "frobenius")
"""``cdp_jax.contraction.PENALTIES``."""
TARGETS = ("network", "drift")
"""``cdp_jax.contraction.TARGETS``: the maps a diffusion policy's penalty can look at."""
FLOW_TARGETS = ("clean", "velocity")
"""``cdp_jax.flow.TARGETS``: the maps a flow policy's penalty can look at."""
FLOW_SAMPLERS = ("euler", "heun")
"""``cdp_jax.flow.FLOW_SAMPLERS``."""
FROBENIUS_SCALES = ("dim", "dim_squared")
"""``cdp_jax.contraction.FROBENIUS_SCALES``."""
FROBENIUS_ESTIMATORS = ("hutchinson", "jvp_pairs", "exact")
"""``cdp_jax.contraction.FROBENIUS_ESTIMATORS``."""
TIME_EMBEDDINGS = ("sinusoidal", "positional", "positional_integer_t")
"""``cdp_jax.networks.TIME_EMBEDDINGS``."""
ACTIVATIONS = ("mish", "relu", "gelu", "silu", "tanh")
"""``cdp_jax.networks.ACTIVATIONS``."""
ACTORS = ("mlp", "lnresnet", "pearce")
"""``cdp_jax.networks.ACTORS``."""
CHUNK_ACTORS = ("unet", "dit")
"""``cdp_jax.chunk_networks.CHUNK_ACTORS``."""
SCHEDULES = ("cosine", "linear")
"""``cdp_jax.agents.common.SCHEDULES``: the discrete VP schedules an agent can take."""

# Plain choices (their modules import them from here).
INITS = ("flax", "torch")  # networks: parameter initialisation schemes
SCHEDULE_KINDS = ("linear", "cosine")  # schedules.KINDS
DISCRETIZATIONS = ("ddpm", "cleandiffuser")  # schedules.DISCRETIZATIONS
SPACINGS = ("uniform", "quadratic", "logsnr", "cleandiffuser")  # schedules.SPACINGS
PREDICTIONS = ("eps", "x0", "v")  # diffusion.PREDICTIONS
VECTOR_MODES = ("sync", "async")  # evaluation.VECTOR_MODES
FRACTION_UNITS = ("episodes", "transitions")  # data.protocol.FRACTION_UNITS
REWARD_NORMALIZATIONS = ("none", "returns_range", "minus_one")  # data.protocol
NORMALIZER_KINDS = ("gaussian", "minmax")  # data.normalization.NORMALIZER_KINDS
PARALLEL_MODES = ("none", "data", "seeds")  # parallel.PARALLEL_MODES
DEVICE_KINDS = ("auto", "cpu", "gpu", "tpu")  # parallel.DEVICE_KINDS

# Dataset builders (``experiments/make_dataset.py``; their modules import gymnasium and minari).
MAZES = ("umaze", "open", "medium", "large")  # data.builders.pointmaze.MAZES
MAZE_REWARD_TYPES = ("sparse", "dense")  # data.builders.pointmaze.REWARD_TYPES
FETCH_TASKS = ("push", "pickandplace")  # data.builders.fetch.TASKS
LOCOMOTION_ENVS = ("hopper", "halfcheetah", "walker2d")  # data.builders.locomotion.ENVS
LOCOMOTION_KINDS = ("medium", "medium-replay", "expert", "medium-expert")  # locomotion.KINDS
EXPERT_BY = ("evaluation", "sampled")  # data.builders.locomotion.EXPERT_BY
