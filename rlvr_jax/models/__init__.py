"""Decoder-only transformer (Llama, Qwen2/2.5, Qwen3), KV cache, presets, loading, tokenizers.

Everything is a pure function of a `ModelConfig` and a plain parameter pytree; see `model.py`
for the parameter layout and the KV-cache protocol.
"""

from rlvr_jax.models.config import ModelConfig, config_from_hf, config_to_hf
from rlvr_jax.models.hf_checkpoint import save_hf
from rlvr_jax.models.loading import load
from rlvr_jax.models.model import (
    Cache,
    Params,
    forward,
    hidden_states,
    init_cache,
    init_params,
    param_logical_axes,
    unembedding,
    unstack_cache,
    unstack_layers,
)
from rlvr_jax.models.presets import PRESETS, get_preset
from rlvr_jax.models.store import ModelStore
from rlvr_jax.models.tokenizer import chat_prompt, load_tokenizer

__all__ = [
    "PRESETS",
    "Cache",
    "ModelConfig",
    "ModelStore",
    "Params",
    "chat_prompt",
    "config_from_hf",
    "config_to_hf",
    "forward",
    "get_preset",
    "hidden_states",
    "init_cache",
    "init_params",
    "load",
    "load_tokenizer",
    "param_logical_axes",
    "save_hf",
    "unembedding",
    "unstack_cache",
    "unstack_layers",
]
