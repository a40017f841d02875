"""rlvr_jax: pure-functional JAX reinforcement learning with verifiable rewards for LLMs."""

__version__ = "0.1.0"
