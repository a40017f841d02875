"""Launchers for ``python -m rlvr_jax.train``: Cloud TPU pod slices, SLURM GPU clusters, sweeps.

Every launcher builds the same training command (:mod:`launch.train_command`) and differs only
in where it runs it. Each has a dry-run mode that prints exactly what it would execute.
"""
