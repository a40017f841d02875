"""Mapping between our parameter pytree and Hugging Face tensor names and layouts.

Every parameter leaf corresponds to one HF tensor (per layer for the stacked `layers`
subtree). HF linear weights are [out, in]; ours are [in, ...out] split into heads, so
conversion is "transpose if needed, then reshape" and its exact inverse. The same table is
used to load safetensors, to load GGUF (after its tensors are brought into HF layout) and to
save HF checkpoints, so the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from rlvr_jax.models.config import ModelConfig
from rlvr_jax.models.model import Params, init_params

# Tensors a checkpoint may carry that have no parameter here.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One parameter leaf: its path, the HF name (with `{i}` for the layer) and layouts."""

    path: tuple[str, ...]
    hf_name: str
    shape: tuple[int, ...]  # ours, per layer for stacked leaves
    hf_shape: tuple[int, ...]
    transpose: bool
    stacked: bool

    def hf_name_at(self, layer: int | None) -> str:
        return self.hf_name.format(i=layer)

    def to_ours(self, hf_tensor: np.ndarray) -> np.ndarray:
        """HF layout -> our per-layer layout."""
        array = hf_tensor.T if self.transpose else hf_tensor
        return array.reshape(self.shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        """Our per-layer layout -> HF layout."""
        if self.transpose:
            return ours.reshape(self.hf_shape[::-1]).T
        return ours.reshape(self.hf_shape)


def abstract_params(config: ModelConfig) -> Params:
    """Shapes and dtypes of `init_params(config, key)` without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """One `TensorSpec` per parameter leaf of `config`'s model."""
    D, F, V = config.hidden_size, config.mlp_dim, config.vocab_size
    H, K, Dh = config.num_heads, config.num_kv_heads, config.head_dim
    layer = "model.layers.{i}."
    table: dict[tuple[str, ...], tuple[str, tuple[int, ...], bool]] = {
        ("embed", "embedding"): ("model.embed_tokens.weight", (V, D), False),
        ("final_norm", "scale"): ("model.norm.weight", (D,), False),
        ("lm_head",): ("lm_head.weight", (V, D), True),
        ("layers", "input_norm", "scale"): (layer + "input_layernorm.weight", (D,), False),
        ("layers", "post_attention_norm", "scale"): (
            layer + "post_attention_layernorm.weight", (D,), False),
        ("layers", "self_attn", "q_proj", "kernel"): (
            layer + "self_attn.q_proj.weight", (H * Dh, D), True),
        ("layers", "self_attn", "k_proj", "kernel"): (
            layer + "self_attn.k_proj.weight", (K * Dh, D), True),
        ("layers", "self_attn", "v_proj", "kernel"): (
            layer + "self_attn.v_proj.weight", (K * Dh, D), True),
        ("layers", "self_attn", "q_proj", "bias"): (
            layer + "self_attn.q_proj.bias", (H * Dh,), False),
        ("layers", "self_attn", "k_proj", "bias"): (
            layer + "self_attn.k_proj.bias", (K * Dh,), False),
        ("layers", "self_attn", "v_proj", "bias"): (
            layer + "self_attn.v_proj.bias", (K * Dh,), False),
        ("layers", "self_attn", "o_proj", "kernel"): (
            layer + "self_attn.o_proj.weight", (D, H * Dh), True),
        ("layers", "self_attn", "q_norm", "scale"): (layer + "self_attn.q_norm.weight", (Dh,),
                                                     False),
        ("layers", "self_attn", "k_norm", "scale"): (layer + "self_attn.k_norm.weight", (Dh,),
                                                     False),
        ("layers", "mlp", "gate_proj", "kernel"): (layer + "mlp.gate_proj.weight", (F, D), True),
        ("layers", "mlp", "up_proj", "kernel"): (layer + "mlp.up_proj.weight", (F, D), True),
        ("layers", "mlp", "down_proj", "kernel"): (layer + "mlp.down_proj.weight", (D, F), True),
    }
    specs = []
    for path, leaf in _leaves_with_paths(abstract_params(config)):
        hf_name, hf_shape, transpose = table[path]
        stacked = path[0] == "layers"
        shape = tuple(leaf.shape[1:] if stacked else leaf.shape)
        specs.append(TensorSpec(path, hf_name, shape, hf_shape, transpose, stacked))
    return specs


def _leaves_with_paths(tree: Params) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        yield tuple(k.key for k in key_path), leaf


def expected_hf_names(config: ModelConfig) -> set[str]:
    """All HF tensor names a checkpoint of `config` must contain."""
    names = set()
    for spec in tensor_specs(config):
        layers = range(config.num_layers) if spec.stacked else [None]
        names.update(spec.hf_name_at(i) for i in layers)
    return names


def assemble_params(
    config: ModelConfig,
    get_hf_tensor: Callable[[str, tuple[int, ...]], np.ndarray],
    shardings: Params | None = None,
) -> Params:
    """Build the parameter pytree one leaf at a time from HF-layout tensors.

    `get_hf_tensor(name, expected_hf_shape)` returns the named tensor (any float dtype) and
    raises a clear error if it is missing or mis-shaped. Each leaf is filled on the host in
    `config.param_dtype`, placed on devices (with `shardings[leaf]` when given, built from
    the host buffer by `jax.make_array_from_callback`, so every process only transfers its own
    shards) and its host buffer released before the next leaf, so host memory peaks at about
    one stacked leaf rather than a second copy of the model.
    """
    dtype = np.dtype(config.param_dtype)
    flat_shardings = dict(_leaves_with_paths(shardings)) if shardings is not None else {}
    result: dict[tuple[str, ...], jax.Array] = {}
    for spec in tensor_specs(config):
        layers = list(range(config.num_layers)) if spec.stacked else [None]
        host = np.empty(((len(layers),) if spec.stacked else ()) + spec.shape, dtype)
        for i in layers:
            tensor = spec.to_ours(get_hf_tensor(spec.hf_name_at(i), spec.hf_shape))
            if spec.stacked:
                host[i] = tensor
            else:
                host[...] = tensor
        sharding = flat_shardings.get(spec.path)
        if sharding is None:
            result[spec.path] = jax.device_put(host)
        else:
            result[spec.path] = jax.make_array_from_callback(
                host.shape, sharding, lambda index, host=host: host[index]
            )
        del host
    return _unflatten(result)


def _unflatten(flat: dict[tuple[str, ...], Any]) -> Params:
    tree: Params = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def hf_tensors(config: ModelConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, HF-layout NumPy array) for every parameter, one layer at a time."""
    flat = dict(_leaves_with_paths(params))
    for spec in tensor_specs(config):
        if spec.path not in flat:
            raise KeyError(f"params lack {'/'.join(spec.path)} required by the config")
        leaf = _to_host(flat[spec.path])
        expected = ((config.num_layers,) if spec.stacked else ()) + spec.shape
        if leaf.shape != expected:
            raise ValueError(
                f"param {'/'.join(spec.path)} has shape {leaf.shape}, config needs {expected}"
            )
        if spec.stacked:
            for i in range(config.num_layers):
                yield spec.hf_name_at(i), spec.to_hf(leaf[i])
        else:
            yield spec.hf_name_at(None), spec.to_hf(leaf)


def _to_host(array: Any) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))
