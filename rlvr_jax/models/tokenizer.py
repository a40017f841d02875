"""Tokenizers for the models: `transformers` fast tokenizers, SentencePiece models, GGUF.

`load_tokenizer` returns a `transformers` tokenizer with its chat template, left padding
(prompts are left-padded for generation) and a pad token (eos when the model has none).
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import sentencepiece
import transformers

from rlvr_jax.models.presets import PRESETS

SENTENCEPIECE_FILE = "tokenizer.model"


def load_tokenizer(
    name_or_path: str | os.PathLike[str], cache_dir: str | None = None
) -> transformers.PreTrainedTokenizerBase:
    """A `transformers` tokenizer for a preset name, an HF directory or a model file.

    - `"smollm2-135m-instruct"` or a `.gguf` file: the tokenizer and chat template embedded
      in the GGUF (built by `transformers` from `tokenizer.ggml.*` metadata);
    - a directory with `tokenizer.json` (or other `transformers` tokenizer files);
    - a SentencePiece `.model` file, or a directory holding only `tokenizer.model`: wrapped
      with `transformers.SentencePieceBackend`, so ids equal `sentencepiece`'s exactly.
    """
    path = os.fspath(name_or_path)
    if path.lower() == "smollm2-135m-instruct":
        from rlvr_jax.models.embedded import smollm2_gguf_path

        path = smollm2_gguf_path(cache_dir)
    elif path.lower() in PRESETS and not os.path.exists(path):
        raise ValueError(f"preset {path!r} has no bundled tokenizer; pass its HF directory")
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file not found: {path}")
        if importlib.util.find_spec("torch") is None:
            raise ImportError(
                f"reading the tokenizer embedded in {path} needs PyTorch (transformers' GGUF "
                "reader uses it): pip install 'rlvr_jax[gguf]'"
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path)
        )
    elif path.endswith(".model") and os.path.isfile(path):
        tokenizer = _sentencepiece_tokenizer(path)
    elif os.path.isdir(path):
        spm_file = os.path.join(path, SENTENCEPIECE_FILE)
        has_fast = os.path.isfile(os.path.join(path, "tokenizer.json"))
        if os.path.isfile(spm_file) and not has_fast:
            tokenizer = _sentencepiece_tokenizer(spm_file)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    else:
        raise FileNotFoundError(
            f"no tokenizer at {path!r}: expected a directory, a .gguf file, a SentencePiece "
            f".model file or the preset 'smollm2-135m-instruct'"
        )
    return _for_generation(tokenizer)


def _sentencepiece_tokenizer(model_file: str) -> Any:
    """Wrap a SentencePiece model; bos/eos/unk come from the model, the chat template from a
    `tokenizer_config.json` beside it if there is one."""
    processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
    special = {}
    for role, index in (("bos_token", processor.bos_id()), ("eos_token", processor.eos_id()),
                        ("unk_token", processor.unk_id())):
        if index >= 0:
            special[role] = processor.id_to_piece(index)
    tokenizer = transformers.SentencePieceBackend(vocab_file=model_file, **special)
    config_file = os.path.join(os.path.dirname(model_file), "tokenizer_config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            tokenizer.chat_template = json.load(f).get("chat_template")
    return tokenizer


def _for_generation(tokenizer: Any) -> Any:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def chat_prompt(
    tokenizer: transformers.PreTrainedTokenizerBase,
    user_message: str,
    system_prompt: str | None = None,
) -> str:
    """The prompt text for one user turn, the chat template applied, ready for the reply."""
    if not tokenizer.chat_template:
        raise ValueError("this tokenizer has no chat template; format the prompt yourself")
    messages = [{"role": "user", "content": user_message}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
