"""Logits parity with transformers' PyTorch models, save_hf round trips, loader errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax import models

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _hf_config(family: str) -> transformers.PretrainedConfig:
    if family == "llama":
        return transformers.LlamaConfig(
            **TINY, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16},
        )
    if family == "qwen2":
        return transformers.Qwen2Config(**TINY, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default",
                                                         "rope_theta": 1e6})
    return transformers.Qwen3Config(**TINY, head_dim=16, rms_norm_eps=1e-6,
                                    tie_word_embeddings=False,
                                    rope_parameters={"rope_type": "default",
                                                     "rope_theta": 1e6})


def _random_hf_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny HF model whose every weight (biases, norms included) is random."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(family),
                                                           dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def _hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def saved_family(request, tmp_path_factory):
    family = request.param
    model = _random_hf_model(family)
    directory = str(tmp_path_factory.mktemp(family))
    model.save_pretrained(directory)
    return family, model, directory


TOKENS = np.array([[5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 12, 50],
                   [0, 0, 0, 0, 44, 8, 90, 91, 1, 6, 77, 23]], np.int64)
MASK = np.array([[1] * 12, [0] * 4 + [1] * 8], np.int64)


def test_logits_match_transformers(saved_family):
    family, hf_model, directory = saved_family
    config, params = models.load(directory)
    assert config.family == family
    ours = np.asarray(models.forward(config, params, jnp.asarray(TOKENS, jnp.int32),
                                     attention_mask=jnp.asarray(MASK)))
    ref = _hf_logits(hf_model, TOKENS, MASK)
    real = MASK.astype(bool)  # HF's outputs at padding positions are unspecified
    np.testing.assert_array_less(np.abs(ours - ref)[real].max(), 1e-4)


def test_save_hf_round_trip(saved_family, tmp_path):
    _, hf_model, directory = saved_family
    config, params = models.load(directory)
    out = str(tmp_path / "exported")
    models.save_hf(config, params, out)
    reloaded_hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    np.testing.assert_allclose(_hf_logits(reloaded_hf, TOKENS, MASK),
                               _hf_logits(hf_model, TOKENS, MASK), atol=1e-6, rtol=0)
    config2, params2 = models.load(out)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_checkpoint_with_index(saved_family, tmp_path):
    _, hf_model, _ = saved_family
    out = str(tmp_path / "sharded")
    hf_model.save_pretrained(out, max_shard_size="20KB")
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    config, params = models.load(out)
    ours = np.asarray(models.forward(config, params, jnp.asarray(TOKENS[:1], jnp.int32)))
    np.testing.assert_array_less(np.abs(ours - _hf_logits(hf_model, TOKENS[:1],
                                                          MASK[:1])).max(), 1e-4)


def test_save_hf_writes_shards_that_load_back(tmp_path):
    config = models.PRESETS["smollm2-135m-instruct"].replace(num_layers=2, vocab_size=64)
    params = models.init_params(config, jax.random.key(1))
    models.save_hf(config, params, str(tmp_path), max_shard_bytes=200_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        files = set(json.load(f)["weight_map"].values())
    assert len(files) > 1
    _, loaded = models.load(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_bfloat16_params_and_compute(saved_family):
    _, hf_model, directory = saved_family
    config, params = models.load(directory, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    logits = models.forward(config, params, jnp.asarray(TOKENS[:1], jnp.int32))
    assert logits.dtype == jnp.float32
    ref = _hf_logits(hf_model, TOKENS[:1], MASK[:1])
    assert np.abs(np.asarray(logits) - ref).max() < 0.1 * np.abs(ref).max()
