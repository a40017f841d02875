"""Truncated importance-sampling weights: verl 0.9.1's weights and figures, hand-worked values,
the settings that cannot work."""

import json
import math
import pathlib

import numpy as np
import pytest

from rlvr_jax import rollout_correction as correction

REFERENCE = json.loads(
    (pathlib.Path(__file__).parent / "reference" / "verl_0_9_1.json").read_text())


@pytest.mark.parametrize("case", REFERENCE["rollout_correction"], ids=lambda c: c["level"])
def test_weights_and_figures_agree_with_verl(case):
    """verl's ``rollout_is_mean`` and ``rollout_is_ratio_fraction_high``; its
    ``rollout_is_max`` is the raw maximum at the sequence level (the capped one, the cap, at
    the token level: here the raw maximum is checked against the inputs)."""
    trainer, sampler, mask = (np.asarray(case[k], np.float32)
                              for k in ("trainer_logp", "sampler_logp", "mask"))
    kwargs = dict(level=case["level"], cap=case["cap"])
    weights = correction.importance_weights(trainer, sampler, mask, **kwargs)
    np.testing.assert_allclose(weights, case["weights"], rtol=1e-6, atol=1e-7)
    figures = correction.weight_statistics(trainer, sampler, mask, **kwargs)
    np.testing.assert_allclose(figures["correction_weight_mean"], case["mean"], rtol=1e-6)
    np.testing.assert_allclose(figures["correction_frac_capped"], case["fraction_high"],
                               rtol=1e-6)
    assert 0 < case["fraction_high"] < 1  # some weights capped, not all
    if case["level"] == "sequence":
        np.testing.assert_allclose(figures["correction_weight_max"], case["max"], rtol=1e-6)
    else:
        raw = np.exp(trainer.astype(np.float64) - sampler)[mask > 0]
        np.testing.assert_allclose(figures["correction_weight_max"], raw.max(), rtol=1e-6)


def test_worked_values():
    """Row 0: log-ratios [0.5, -0.2, 1.0] (token weights e^0.5, e^-0.2, e^1 capped at 2; the
    sequence weight e^1.3 = 3.669 capped at 2). Row 1: [0.1] then padding (e^0.1 = 1.105)."""
    sampler = np.zeros((2, 3), np.float32)
    trainer = np.array([[0.5, -0.2, 1.0], [0.1, 7.0, 7.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
    token = correction.importance_weights(trainer, sampler, mask, level="token", cap=2.0)
    np.testing.assert_allclose(token, [[math.exp(0.5), math.exp(-0.2), 2.0],
                                       [math.exp(0.1), 0, 0]], rtol=1e-6)
    sequence = correction.importance_weights(trainer, sampler, mask, level="sequence", cap=2.0)
    np.testing.assert_allclose(sequence, [[2.0, 2.0, 2.0], [math.exp(0.1), 0, 0]], rtol=1e-6)
    figures = correction.weight_statistics(trainer, sampler, mask, level="sequence", cap=2.0)
    assert figures["correction_frac_capped"] == 0.5  # one of two sequences
    np.testing.assert_allclose(figures["correction_weight_max"], math.exp(1.3), rtol=1e-6)
    np.testing.assert_allclose(figures["correction_weight_mean"], (6 + math.exp(0.1)) / 4,
                               rtol=1e-6)
    figures = correction.weight_statistics(trainer, sampler, mask, level="token", cap=2.0)
    assert figures["correction_frac_capped"] == 0.25  # one of four tokens
    huge = correction.importance_weights(trainer * 100, sampler, mask, level="token", cap=1e12)
    np.testing.assert_allclose(huge[0, 2], math.exp(20.0), rtol=1e-6)  # log-ratio clamped at 20
    empty = correction.weight_statistics(trainer, sampler, np.zeros_like(mask), level="token",
                                         cap=2.0)
    assert empty == dict.fromkeys(empty, 0.0)


@pytest.mark.parametrize(("level", "cap", "source", "message"), [
    ("tokens", 2.0, "trainer", r"rollout.correction='tokens'; expected one of"),
    ("token", 0.5, "trainer", r"rollout.correction_cap must be >= 1"),
    ("sequence", 2.0, "sampler", r"old_logp_source='sampler'.*count twice"),
])
def test_settings_that_cannot_work_are_refused(level, cap, source, message):
    with pytest.raises(ValueError, match=message):
        correction.check_settings(level, cap, source)
    correction.check_settings("none", 2.0, "sampler")  # off: any source
