"""A tiny random model, a character tokenizer and a trivially learnable task, for end-to-end
tests of the training loop that run in seconds on a CPU.

The task: every prompt asks for the letter "a"; the reward is 1 when the completion's first
character is "a". A random policy over the ~20-token vocabulary hits it about 5% of the time,
so groups are mixed often enough for any estimator to learn it in a few dozen steps.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import tokenizers
import transformers

from rlvr_jax import models, tasks
from rlvr_jax.rewards.verification import Status, Verification

LETTERS = list("abcdefghij")
SPECIALS = ["<pad>", "<eos>", "<user>", "<assistant>"]
TEMPLATE = (
    "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + LETTERS + [" ", "?", "!"])}
    model = tokenizers.models.WordLevel(vocab, unk_token="?")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = tokenizers.decoders.Fuse()
    tokenizer.add_special_tokens(SPECIALS)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>")
    fast.chat_template = TEMPLATE
    return fast


def write_model(directory: str, seed: int = 0) -> str:
    """Saves a tiny random Llama and its tokenizer as an HF directory; returns the path."""
    tokenizer = make_tokenizer()
    config = models.ModelConfig(
        family="llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, mlp_dim=64, eos_token_ids=(tokenizer.eos_token_id,),
        bos_token_id=tokenizer.eos_token_id, max_position_embeddings=512,
    )
    params = models.init_params(config, jax.random.key(seed))
    models.save_hf(config, params, directory)
    tokenizer.save_pretrained(directory)
    return directory


class FirstLetterVerifier:
    """In-process: the answer is the completion's first character; right when it is the
    reference (``"a"``)."""

    def extract(self, completion: str) -> str | None:
        return completion.strip()[:1] or None

    def verify(self, completions, references) -> Verification:
        scores = [float(c.strip()[:1] == r) for c, r in zip(completions, references, strict=True)]
        return Verification(np.asarray(scores, np.float32), (Status.OK,) * len(scores))

    def close(self) -> None:
        pass


def first_letter_task(size: int = 64) -> tasks.Task:
    data = [{"id": f"toy/{i}", "question": "say a" + "!" * (i % 3), "answer": "a"}
            for i in range(size)]
    return tasks.Task(
        name="toy_first_letter", load_split=lambda split: data, verifier=FirstLetterVerifier(),
        prompt_format=tasks.PromptFormat(instruction="", system_prompt=None),
    )


def register() -> None:
    if "toy_first_letter" not in tasks.names():
        tasks.register("toy_first_letter", lambda **_: first_letter_task())


def toy_config(model_dir: str):
    from rlvr_jax.config import base_config
    from rlvr_jax.recipes import apply_variant

    config = base_config()
    config.total_steps = 3
    config.compilation_cache = ""  # tests compile afresh (one test turns it on)
    config.model.name = model_dir
    config.task.name = "toy_first_letter"
    config.rollout.prompts_per_step = 4
    config.rollout.group_size = 8
    config.rollout.max_prompt_len = 16
    config.rollout.max_new_tokens = 4
    config.rollout.prompt_bucket = 8
    config.rollout.length_bucket = 4
    config.optim.learning_rate = 3e-3
    config.batching.logprob_chunk_size = 8
    config.eval.every_steps = 0
    config.eval.at_start = False
    config.eval.num_prompts = 8
    config.eval.samples_per_prompt = 4
    config.eval.allow_train_overlap = True  # both splits are the same three questions
    config.checkpoint.save_every_steps = 2
    config.logging.num_sample_texts = 1
    return apply_variant(config, os.environ.get("TOY_VARIANT", "grpo"))
