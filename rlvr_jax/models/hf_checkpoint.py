"""Hugging Face checkpoint directories: `config.json` plus one or many `*.safetensors`.

Loading reads tensor by tensor through memory maps (see `hf_layout.assemble_params`);
saving writes a directory `transformers.AutoModelForCausalLM.from_pretrained` accepts,
split into shards with a `model.safetensors.index.json` when it exceeds `max_shard_bytes`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from rlvr_jax.models.config import ModelConfig, config_from_hf, config_to_hf
from rlvr_jax.models.hf_layout import (
    IGNORED_SUFFIXES,
    assemble_params,
    expected_hf_names,
    hf_tensors,
    tensor_specs,
)
from rlvr_jax.models.model import Params
from rlvr_jax.models.safetensors_io import SafetensorsFile, save_safetensors

INDEX_FILE = "model.safetensors.index.json"


def read_hf_config(directory: str, **overrides: Any) -> ModelConfig:
    """`ModelConfig` from `directory/config.json`; errors name the file."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in checkpoint directory {directory}")
    with open(path) as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from e
    try:
        return config_from_hf(hf, **overrides)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _tensor_files(directory: str) -> dict[str, str]:
    """Map tensor name -> safetensors file path, from the index if there is one."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in checkpoint directory {directory}")
    located = {}
    for file in files:
        path = os.path.join(directory, file)
        located.update({name: path for name in SafetensorsFile(path)})
    return located


def load_hf_directory(
    directory: str, *, dtype: Any, param_dtype: Any, shardings: Params | None = None
) -> tuple[ModelConfig, Params]:
    """(config, params) from an HF checkpoint directory, one tensor at a time."""
    config = read_hf_config(directory, dtype=dtype, param_dtype=param_dtype)
    located = _tensor_files(directory)
    expected = expected_hf_names(config)
    tied_head = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(
        n for n in set(located) - expected - tied_head if not n.endswith(IGNORED_SUFFIXES)
    )
    if unexpected:
        raise ValueError(
            f"checkpoint {directory} has tensors this {config.family} config does not use "
            f"(architecture mismatch?): {unexpected[:8]}"
        )
    open_files: dict[str, SafetensorsFile] = {}

    def get(name: str, hf_shape: tuple[int, ...]) -> np.ndarray:
        if name not in located:
            raise KeyError(f"checkpoint {directory} is missing tensor {name!r}")
        path = located[name]
        if path not in open_files:
            open_files[path] = SafetensorsFile(path)
        tensor = open_files[path][name]
        if tuple(tensor.shape) != hf_shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, config.json "
                f"implies {hf_shape}"
            )
        return tensor

    return config, assemble_params(config, get, shardings)


def _plan_shards(config: ModelConfig, max_shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard file, in `hf_tensors` order, from shapes alone."""
    itemsize = np.dtype(config.param_dtype).itemsize
    shards: list[list[str]] = [[]]
    size = 0
    for spec in tensor_specs(config):
        nbytes = int(np.prod(spec.hf_shape)) * itemsize
        for i in range(config.num_layers) if spec.stacked else [None]:
            if size and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(spec.hf_name_at(i))
            size += nbytes
    return shards


def save_hf(
    config: ModelConfig, params: Params, directory: str, *, max_shard_bytes: int = 4 << 30
) -> None:
    """Write `params` as an HF checkpoint (`config.json`, safetensors, index if sharded).

    Tensors are stored in `config.param_dtype` and streamed shard by shard, so host memory
    holds at most one shard (plus one stacked leaf). Only process 0 writes files.
    """
    plan = _plan_shards(config, max_shard_bytes)
    files = (["model.safetensors"] if len(plan) == 1 else
             [f"model-{k:05d}-of-{len(plan):05d}.safetensors" for k in range(1, len(plan) + 1)])
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config_to_hf(config), f, indent=2)
        generation = {"bos_token_id": config.bos_token_id,
                      "eos_token_id": list(config.eos_token_ids) or None}
        with open(os.path.join(directory, "generation_config.json"), "w") as f:
            json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
    tensors = hf_tensors(config, params)
    weight_map = {}
    total = 0
    for names, file in zip(plan, files, strict=True):
        shard = {}
        for name in names:
            produced, tensor = next(tensors)
            if produced != name:
                raise RuntimeError(f"shard plan expected tensor {name!r}, got {produced!r}")
            shard[name] = np.ascontiguousarray(tensor, dtype=config.param_dtype)
            total += shard[name].nbytes
        if writer:
            save_safetensors(os.path.join(directory, file), shard)
        weight_map.update(dict.fromkeys(names, file))
        del shard
    if writer and len(plan) > 1:
        with open(os.path.join(directory, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f,
                      indent=2)
