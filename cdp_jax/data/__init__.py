"""Offline datasets: Minari and robomimic readers, windows, normalisers, device-resident batches.

Modules: ``dataset`` (the :class:`OfflineDataset` container, windows, episode subsets), ``minari``
(load any Minari id), ``robomimic`` (robomimic HDF5), ``normalization`` (JSON-serialisable
normalisers), ``buffer`` (device-resident sampling under jit), ``builders`` (datasets the project
makes: PointMaze, random policy). Import the submodule you need: ``from cdp_jax.data import
minari``.
"""
