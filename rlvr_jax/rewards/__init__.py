"""Verifiers: binary rewards for completions checked against reference answers.

Every verifier presents one interface (``verification.Verifier``)::

    verifier.extract(completion)                    # final answer (or code) string, or None
    verification = verifier.verify(completions, references)
    verification.rewards                            # np.ndarray [N] float32 in {0, 1}
    verification.statuses                           # tuple of Status: ok/no_answer/timeout/crash
    verification.timeouts, .crashes, .no_answer     # counts
    verifier.close()                                # stops worker processes (restart on use)

* ``math_verifier()``: final answers (``extraction.extract_answer``) checked for mathematical
  equivalence by ``math-verify``;
* ``procedural_verifier(extract)``: answers checked by reasoning-gym's scorers, partial credit
  counting as wrong, no answer reaching a scorer's ``eval`` (``answer_guard.py``);
* ``CodeVerifier``: code confined by the kernel in a sandbox and judged from outside it
  (``sandbox.py`` states the threat model and the isolation layers).

The first two are configurations of ``AnswerVerifier``: extraction in the calling process,
the answer-equivalence function in a ``pebble`` process pool with a hard per-item timeout
(``pool.TimeoutPool``). Verification never raises on model output and never runs it in this
process; a timeout or crash scores 0 and is counted. ``distributed.verify_across_processes``
splits a task's verification over the processes of a multi-host job. Tasks (data + prompt
format + verifier under a name) are in ``rlvr_jax.tasks``.
"""

from rlvr_jax.boxed import extract_boxed
from rlvr_jax.rewards.answer_verifier import AnswerVerifier
from rlvr_jax.rewards.code_verifier import CodeVerifier
from rlvr_jax.rewards.extraction import extract_answer, extract_last_number
from rlvr_jax.rewards.math_verifier import math_verifier
from rlvr_jax.rewards.procedural_verifier import procedural_verifier
from rlvr_jax.rewards.verification import Status, Verification, Verifier

__all__ = [
    "AnswerVerifier",
    "CodeVerifier",
    "Status",
    "Verification",
    "Verifier",
    "extract_answer",
    "extract_boxed",
    "extract_last_number",
    "math_verifier",
    "procedural_verifier",
]
