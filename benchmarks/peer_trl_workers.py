"""The two sides of `benchmarks/peer_trl.py`: one long-lived process each, one RL step per command.

    python -m benchmarks.peer_trl_workers {rlvr_jax,trl} --steps N --workdir DIR

A worker loads its model, writes its probe (the token ids and float32 logits of one
chat-formatted prompt) to ``<workdir>/probe.npz``, says ``ready`` and then runs one RL step
each time the parent writes ``step`` on its standard input, answering with that step's
report; ``stop`` ends it. Messages to the parent are JSON lines on the worker's original
standard output; everything the libraries print goes to standard error (the parent's log).

Both sides run the same work: the main job's recipe ``configs/smollm2_arith.py:grpo``
(SmolLM2-135M-Instruct in float32, 4 prompts x 4 samples, at most 24 new tokens, temperature 1
without truncation, lr 1.5e-5 constant, one AdamW update per rollout, gradient norm clipped to
1, no KL, token-mean loss, no activation checkpointing), the same prompts in the same order
(the project's ``PromptStream`` with the project's chat template) and the project's task
verifier as the reward.

- ``rlvr_jax``: ``rlvr_jax.train.run`` itself, paced by the progress bar it is given
  (:class:`PacedProgress`, whose ``update()`` after each step reports and waits); the split of
  a step is the run's own ``time/*`` metrics from ``<workdir>/metrics.jsonl``, and the
  questions it reports are those of the samples it logged (``samples.jsonl``).
- ``trl``: TRL's ``GRPOTrainer`` with plain ``transformers`` generation, the weights read by
  ``transformers`` from the same GGUF file (its own dequantisation), paced by a
  ``TrainerCallback`` that waits in ``on_step_begin``; generation, reward, the rest of the
  rollout, the loss forward, the backward and the optimizer step are timed by wrapping the
  trainer's methods.

A report holds the step's questions (TRL's: every prompt rewarded; the parent checks that
ours are among them), ``step_s`` (the side's step: ours ``time/step_seconds``, rollout and update;
TRL's from ``on_step_begin`` to ``on_step_end``), ``window_s`` and the CPU seconds of the
window it was measured over (ours: from the ``step`` command to the end of the step's
logging, so it includes the step; TRL's: the step), the split, tokens generated, the worker's
peak resident memory so far (``ru_maxrss``, the worker alone, its loading included), its
resident memory at the end of the step and that of its live child processes (the verifier's
workers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "configs" / "smollm2_arith.py"
VARIANT = "grpo"
SIDES = ("rlvr_jax", "trl")
PROBE_QUESTION = "What is 38 + 47?"
# Commands (parent -> worker, one per line) and events (worker -> parent, JSON lines).
STEP, STOP = "step", "stop"
READY, REPORT = "ready", "report"


class Stop(BaseException):
    """The parent said ``stop``: unwinds the training loop (a BaseException, so that no
    library's ``except Exception`` swallows it)."""


class Channel:
    """Commands from the parent on stdin; events to the parent as JSON lines on the original
    stdout, which from here on is standard error for everything else the process prints."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self._out: TextIO = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)

    def send(self, event: str, **fields: Any) -> None:
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()

    def wait(self) -> None:
        """Returns on ``step``; raises :class:`Stop` on ``stop`` or when the parent is gone."""
        command = sys.stdin.readline().strip()
        if command == STEP:
            return
        if command in (STOP, ""):
            raise Stop
        raise ValueError(f"unknown command {command!r}; expected {STEP!r} or {STOP!r}")


class Meter:
    """Wall and CPU seconds of a window: this process (all its threads) and its live child
    processes (the verifier's workers), and their memory."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._gone = psutil.Error  # a child that ended between listing and reading
        self._start = (0.0, 0.0, 0.0)

    def _children(self) -> list[Any]:
        return self._process.children(recursive=True)

    def _cpu(self) -> tuple[float, float]:
        own = self._process.cpu_times()
        children = 0.0
        for child in self._children():
            try:
                times = child.cpu_times()
                children += times.user + times.system
            except self._gone:
                continue
        return own.user + own.system, children

    def start(self) -> None:
        self._start = (time.perf_counter(), *self._cpu())

    def window(self) -> dict[str, float]:
        """Seconds since :meth:`start`: wall, CPU of this process and of its children."""
        wall, own, children = time.perf_counter(), *self._cpu()
        return {"window_s": wall - self._start[0], "cpu_s": own - self._start[1],
                "children_cpu_s": children - self._start[2]}

    def memory(self) -> dict[str, int]:
        """This process's peak resident bytes so far (loading included) and now, and its live
        children's resident bytes now."""
        children = 0
        for child in self._children():
            try:
                children += child.memory_info().rss
            except self._gone:
                continue
        return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "rss_bytes": self._process.memory_info().rss, "children_rss_bytes": children}


def benchmark_config(steps: int) -> Any:
    """The main job's recipe, run for ``steps`` paced steps.

    Only what happens outside the step changes: one step more than measured (the parent stops
    the run before it, so the final evaluation and save never run), no evaluation, no
    periodic checkpoint, no TensorBoard.
    """
    spec = importlib.util.spec_from_file_location(RECIPE.stem, RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(VARIANT)
    config.total_steps = steps + 1
    config.eval.at_start = False
    config.eval.every_steps = 0
    config.checkpoint.save_every_steps = 0
    config.logging.tensorboard = False
    return config


def prompt_sampler(config: Any, task: Any, tokenizer: Any) -> Any:
    """The run's ``rollout.Sampler`` for prompt formatting and filtering (no model needed)."""
    from rlvr_jax import rollout

    return rollout.Sampler(
        None, tokenizer, task, max_prompt_len=config.rollout.max_prompt_len,
        prompt_bucket=config.rollout.prompt_bucket, length_bucket=config.rollout.length_bucket,
        eos_ids=(), pad_id=0, unstack_layers=config.rollout.unstack_decode_layers)


def probe_ids(tokenizer: Any) -> list[int]:
    """Token ids of the probe: one question in the project's chat template."""
    from rlvr_jax.tasks.prompts import PromptFormat, encode_prompt, render_prompt

    rendered = render_prompt(PROBE_QUESTION, PromptFormat(instruction=""), tokenizer)
    return encode_prompt(rendered, tokenizer).ids


def save_probe(workdir: pathlib.Path, ids: list[int], logits: Any) -> str:
    import numpy as np

    path = workdir / "probe.npz"
    np.savez(path, ids=np.asarray(ids, np.int64), logits=np.asarray(logits, np.float32))
    return str(path)


# --- rlvr_jax -------------------------------------------------------------------------------

STEP_METRICS = {  # split name -> metrics.jsonl key (absent keys are reported as None)
    "generation": "time/generation_seconds",
    "verification": "time/verification_seconds",
    "scoring": "time/scoring_seconds",
    "update": "time/update_seconds",
}


def last_metrics(workdir: pathlib.Path, step: int) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of ``step`` (the last one written for it)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    for line in reversed(lines):
        record = json.loads(line)
        if record["step"] == step and "time/step_seconds" in record:
            return record
    raise RuntimeError(f"no metrics of step {step} in {workdir / 'metrics.jsonl'}")


def sampled_questions(workdir: pathlib.Path, step: int) -> list[str]:
    """The questions of the completions the run logged for ``step`` (``samples.jsonl``, the
    first ``logging.num_sample_texts`` groups), to check that TRL trained on them too."""
    questions = []
    for line in (workdir / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["step"] == step:
            for key, text in record.items():
                if key.startswith("samples/"):
                    match = re.match(r"QUESTION: (.*?)\nREFERENCE: ", text, re.DOTALL)
                    if match is None:
                        raise RuntimeError(f"no question in the logged sample {text[:200]!r}")
                    questions.append(match.group(1))
    return questions


@dataclasses.dataclass
class PacedProgress:
    """The progress bar ``rlvr_jax.train.run`` advances once per step: ``update()`` reports
    the step just finished and waits for the next ``step`` command."""

    channel: Channel
    meter: Meter
    workdir: pathlib.Path
    group_rows: int  # B * G completions per step
    step: int = 0

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def update(self, n: int = 1) -> None:
        self.step += n
        window = self.meter.window()
        metrics = last_metrics(self.workdir, self.step)
        split = {name: metrics.get(key) for name, key in STEP_METRICS.items()}
        self.channel.send(
            REPORT, step=self.step, step_s=metrics["time/step_seconds"], **window, split=split,
            tokens=metrics["train/response_length_mean"] * self.group_rows,
            questions=sampled_questions(self.workdir, self.step), **self.meter.memory())
        self.channel.wait()
        self.meter.start()


def run_rlvr_jax(channel: Channel, steps: int, workdir: pathlib.Path) -> None:
    import jax
    import jax.numpy as jnp

    from rlvr_jax import config as config_lib
    from rlvr_jax import models, train

    config = benchmark_config(steps)
    store = models.ModelStore()  # loaded before the first step, reused by the run
    model_config, params = store.weights(
        config.model.name, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
        cache_dir=config.model.cache_dir)
    tokenizer = store.tokenizer(config.model.tokenizer or config.model.name,
                                cache_dir=config.model.cache_dir)
    ids = probe_ids(tokenizer)
    logits = models.forward(model_config, params, jnp.asarray([ids], jnp.int32))[0]  # [T, V]
    meter = Meter()
    channel.send(READY, probe=save_probe(workdir, ids, logits),
                 versions={"jax": jax.__version__}, settings=config_lib.flatten(config))
    progress = PacedProgress(channel, meter, workdir / "run",
                             config.rollout.prompts_per_step * config.rollout.group_size)
    channel.wait()
    meter.start()
    train.run(config, str(workdir / "run"), model_store=store, progress=progress)


# --- TRL ------------------------------------------------------------------------------------


class Timers:
    """Seconds spent in named calls during the current step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.tokens = 0
        self.questions: list[str] = []  # of the completions rewarded in this step

    def reset(self) -> None:
        self.seconds, self.tokens, self.questions = {}, 0, []

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, owner: Any, method: str, name: str,
             after: Callable[[Any], None] | None = None) -> None:
        """Replaces ``owner.method`` with a version that adds its time to ``name``."""
        original = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            result = original(*args, **kwargs)
            self.add(name, time.perf_counter() - began)
            if after is not None:
                after(result)
            return result

        setattr(owner, method, timed)


TRL_SETTINGS = (  # the GRPOConfig values that make the work the same, stored with the result
    "per_device_train_batch_size", "num_generations", "steps_per_generation", "num_iterations",
    "max_completion_length", "temperature", "top_k", "top_p", "min_p", "learning_rate",
    "lr_scheduler_type", "weight_decay", "max_grad_norm", "beta", "loss_type", "scale_rewards",
    "epsilon", "epsilon_high", "activation_checkpointing", "bf16", "shuffle_dataset",
)


def trl_split(seconds: dict[str, float]) -> dict[str, float]:
    """TRL's step in the parts it runs one after another: the rollout
    (``_generate_and_score_completions``) is generation + verification (reward) + scoring
    (the rest: advantages, and old/reference log-probs when the settings need them); then
    the loss forward (``compute_loss``), the backward and the optimizer step."""
    rollout = seconds.get("rollout", 0.0)
    generation = seconds.get("generation", 0.0)
    verification = seconds.get("verification", 0.0)
    return {"generation": generation, "verification": verification,
            "scoring": rollout - generation - verification,
            "forward": seconds.get("forward", 0.0), "backward": seconds.get("backward", 0.0),
            "optimizer": seconds.get("optimizer", 0.0)}


def trl_prompts(config: Any, steps: int, tokenizer: Any) -> tuple[list[str], list[dict], Any]:
    """The chat-formatted prompts of ``steps`` steps in the run's order (the project's
    ``PromptStream`` with the run's seed and prompt filter), their examples and the task."""
    from rlvr_jax import prompt_stream, tasks

    task = tasks.get(config.task.name, **config.task.options.to_dict())
    sampler = prompt_sampler(config, task, tokenizer)
    stream = prompt_stream.PromptStream(task, config.task.train_split, config.seed)
    examples = []
    for _ in range(steps):
        examples += stream.take(config.rollout.prompts_per_step, sampler.prompt_problem)[0]
    texts = [task.render_prompt(example, tokenizer).text for example in examples]
    for text, example in zip(texts, examples, strict=True):
        ours = sampler.encode([example])[0][0]
        theirs = tokenizer(text)["input_ids"]  # how TRL tokenizes a plain-text prompt
        if ours != theirs:
            raise AssertionError(f"TRL would tokenize the prompt of {example.get('id')!r} as "
                                 f"{theirs}, the project as {ours}")
    return texts, examples, task


def trainable_gguf_model(path: str) -> Any:
    """The GGUF file's weights as ``transformers`` dequantises them, in a plain float32 model.

    ``transformers`` marks a model read from a GGUF file as quantized even when it holds
    dequantised float32 weights, and its ``Trainer`` refuses to train a quantized model; the
    same tensors are loaded into a model built from the same configuration instead.
    """
    import torch
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    hf_config = copy.deepcopy(loaded.config)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model


def run_trl(channel: Channel, steps: int, workdir: pathlib.Path) -> None:
    import datasets
    import torch
    import transformers
    import trl

    from rlvr_jax import models
    from rlvr_jax.models.embedded import smollm2_gguf_path

    config = benchmark_config(steps)
    if config.model.name != "smollm2-135m-instruct":
        raise ValueError(f"the TRL side loads the embedded SmolLM2 GGUF; the recipe runs "
                         f"{config.model.name!r}")
    tokenizer = models.load_tokenizer(config.model.name, cache_dir=config.model.cache_dir)
    texts, examples, task = trl_prompts(config, config.total_steps, tokenizer)
    model = trainable_gguf_model(smollm2_gguf_path(config.model.cache_dir))
    ids = probe_ids(tokenizer)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids])).logits[0].numpy()  # [T, V]

    def reward(completions: list[str], row: list[int], **kwargs: Any) -> list[float]:
        del kwargs
        step_examples = [examples[i] for i in row]
        timers.questions += [example["question"] for example in step_examples]
        return task.verify(completions, step_examples).rewards.tolist()

    rollout, optim, loss = config.rollout, config.optim, config.loss
    if (config.batching.epochs, config.batching.mini_batches,
            config.batching.micro_batches) != (1, 1, 1) or loss.kl_coef:
        raise ValueError("the TRL side runs one update per rollout without KL")
    args = trl.GRPOConfig(
        output_dir=str(workdir / "trainer"), seed=config.seed, use_cpu=True, bf16=False,
        max_steps=config.total_steps, per_device_train_batch_size=rollout.prompts_per_step
        * rollout.group_size, gradient_accumulation_steps=1, num_generations=rollout.group_size,
        num_iterations=1, shuffle_dataset=False, max_completion_length=rollout.max_new_tokens,
        temperature=rollout.sampling.temperature, top_p=rollout.sampling.top_p,
        top_k=rollout.sampling.top_k, min_p=rollout.sampling.min_p or None,
        learning_rate=optim.learning_rate, lr_scheduler_type="constant",
        warmup_steps=optim.warmup_steps, weight_decay=optim.weight_decay,
        adam_beta1=optim.b1, adam_beta2=optim.b2, adam_epsilon=optim.eps,
        max_grad_norm=optim.grad_clip_norm, beta=0.0, loss_type="dapo", scale_rewards="group",
        epsilon=loss.clip_low, epsilon_high=loss.clip_high, activation_checkpointing=False,
        logging_steps=config.total_steps + 1, save_strategy="no", report_to="none",
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0)
    if (optim.name, optim.schedule, loss.aggregation) != ("adamw", "constant", "token_mean"):
        raise ValueError("the TRL side runs constant-lr AdamW with the token-mean (dapo) loss")
    if args.activation_checkpointing or args.bf16 or args.steps_per_generation != 1:
        raise ValueError(f"TRL settings differ from the work: activation_checkpointing="
                         f"{args.activation_checkpointing}, bf16={args.bf16}, "
                         f"steps_per_generation={args.steps_per_generation}")
    settings = {name: getattr(args, name) for name in TRL_SETTINGS}
    timers = Timers()
    meter = Meter()

    class Pace(transformers.TrainerCallback):
        """Waits for ``step`` before each step and reports after it."""

        def __init__(self) -> None:
            self.step = 0
            self.began = 0.0
            self.optimizer_began = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            if self.step == 0:
                channel.send(READY, probe=save_probe(workdir, ids, logits),
                             versions={"torch": torch.__version__, "trl": trl.__version__,
                                       "transformers": transformers.__version__},
                             settings={**settings, "torch_threads": torch.get_num_threads()})
            channel.wait()
            timers.reset()
            meter.start()
            self.began = time.perf_counter()

        def on_pre_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            self.optimizer_began = time.perf_counter()

        def on_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            timers.add("optimizer", time.perf_counter() - self.optimizer_began)

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.step += 1
            step_s = time.perf_counter() - self.began
            channel.send(REPORT, step=self.step, step_s=step_s, **meter.window(),
                         split=trl_split(timers.seconds), tokens=timers.tokens,
                         questions=list(dict.fromkeys(timers.questions)), **meter.memory())

    dataset = datasets.Dataset.from_list([{"prompt": text, "row": i}
                                          for i, text in enumerate(texts)])
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Pace()])

    def count_tokens(generated: Any) -> None:
        timers.tokens += sum(len(completion) for completion in generated[1])

    timers.wrap(trainer, "_generate_and_score_completions", "rollout")
    timers.wrap(trainer, "_generate", "generation", after=count_tokens)
    timers.wrap(trainer, "_calculate_rewards", "verification")
    timers.wrap(trainer, "compute_loss", "forward")
    timers.wrap(trainer.accelerator, "backward", "backward")
    trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("side", choices=SIDES)
    parser.add_argument("--steps", type=int, required=True, help="steps the parent will ask for")
    parser.add_argument("--workdir", required=True, help="an empty directory of this side")
    args = parser.parse_args()
    channel = Channel()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Stop):
        (run_rlvr_jax if args.side == "rlvr_jax" else run_trl)(channel, args.steps, workdir)
    os._exit(0)  # leave at once: the verifier pool and the libraries' threads need no cleanup


if __name__ == "__main__":
    main()
