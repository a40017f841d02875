"""The compile counter sees each new program once, and nothing for a cached call."""

import jax
import jax.numpy as jnp

from rlvr_jax.compile_events import CompileCounter


def test_counts_a_program_per_new_shape_and_none_for_a_repeated_call():
    double = jax.jit(lambda x: 2 * x + 1)
    three, four, five = jnp.ones(3), jnp.ones(4), jnp.ones(5)  # built before counting
    with CompileCounter() as counter:
        double(three).block_until_ready()
        double(three).block_until_ready()  # the same shape: no new program
        assert counter.programs == 1 and counter.seconds > 0
        double(four).block_until_ready()
        assert counter.figures()["compiled_programs"] == 2
        assert counter.cache_hits == 0  # no persistent cache here
    double(five).block_until_ready()  # closed: not counted
    assert counter.programs == 2
