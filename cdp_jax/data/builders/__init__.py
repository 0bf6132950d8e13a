"""Datasets the project builds itself, written with Minari's own writer, deterministic given a seed.

``pointmaze`` (BFS waypoint PD controller + action noise, as D4RL maze2d / Minari pointmaze),
``random_policy`` (uniform random actions in any gymnasium env); ``writer`` (atomic Minari writes).
Command line: ``python experiments/make_dataset.py --help``.
"""
