"""Shared pytest setup: float32 matmuls at full precision on CPU, so tolerances mean something."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
