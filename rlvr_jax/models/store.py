"""Weights and tokenizers loaded once per process and shared by the runs it trains.

A study (``experiments/study.py``) trains many runs of one model in one process; loading and
dequantising the checkpoint and building the tokenizer once saves that start-up for every run
after the first. The trainer never changes or donates the loaded parameters
(``train_step.create_train_state`` places a copy into the train state), so every run starts from
the same stored values.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.loading import load
from rlvr_jax.models.model import Params
from rlvr_jax.models.tokenizer import load_tokenizer


class ModelStore:
    """``models.load`` and ``models.load_tokenizer`` with their results kept by argument."""

    def __init__(self) -> None:
        self._weights: dict[tuple[Any, ...], tuple[ModelConfig, Params]] = {}
        self._tokenizers: dict[tuple[Any, ...], Any] = {}

    def weights(self, name_or_path: str | os.PathLike[str], *, dtype: Any, param_dtype: Any,
                cache_dir: str | None) -> tuple[ModelConfig, Params]:
        """``models.load(name_or_path, dtype, param_dtype, cache_dir)``, loaded on first use."""
        key = (os.fspath(name_or_path), jnp.dtype(dtype).name, jnp.dtype(param_dtype).name,
               cache_dir)
        if key not in self._weights:
            self._weights[key] = load(name_or_path, dtype=jnp.dtype(dtype),
                                      param_dtype=jnp.dtype(param_dtype), cache_dir=cache_dir)
        return self._weights[key]

    def tokenizer(self, name_or_path: str | os.PathLike[str], *, cache_dir: str | None) -> Any:
        """``models.load_tokenizer(name_or_path, cache_dir)``, loaded on first use."""
        key = (os.fspath(name_or_path), cache_dir)
        if key not in self._tokenizers:
            self._tokenizers[key] = load_tokenizer(name_or_path, cache_dir=cache_dir)
        return self._tokenizers[key]
