"""Launchers for ``python -m rlvr_jax.train``: Cloud TPU pod slices, SLURM GPU clusters, sweeps.

Every launcher builds the same training command (:mod:`launch.train_command`) for one run or a
sweep's runs (:mod:`launch.sweep`) and differs only in where it runs it; each can print exactly
what it would execute. See launch/README.md.
"""
