#!/usr/bin/env bash
# The GPU suite (benchmarks/gpu_suite.py) for a GPU machine that reaches no package index.
#
#   bash benchmarks/gpu_suite.sh prepare         # here, with PyPI: fills .gpu_assets/ (~16 MB)
#   bash benchmarks/gpu_suite.sh run [OUT_DIR [SUITE_ARGS...]]   # there, from the repository
#                       # root, with .gpu_assets/ copied along: < 8 minutes
#                       # (SUITE_ARGS go to gpu_suite.py, e.g. --parts train_step rl_step)
#
# prepare: the wheels of benchmarks/gpu_requirements.txt for CPython 3.12 on x86-64 Linux
# (pure-Python source packages built into wheels, pycosat's source kept to build there) and the
# SmolLM2 tokenizer saved as a directory (tokenizer.json, chat template) from the embedded GGUF.
# run: installs them into $SITE (default /tmp/site; first on PYTHONPATH, over the image's
# packages) and runs `python3 -m benchmarks.gpu_suite --out-dir OUT_DIR` (default
# benchmarks/results/gpu_suite). PYTHON (default python3) names the interpreter in both.
set -euo pipefail

ASSETS=.gpu_assets
WHEELS=$ASSETS/wheels
SOURCES=$ASSETS/sources
TOKENIZER=$ASSETS/smollm2-tokenizer
SITE=${SITE:-/tmp/site}
SOURCE_ONLY="cellpylib zss pycosat"
PURE_SOURCE="cellpylib zss"
PYTHON=${PYTHON:-python3}

requirements() {  # the pinned lines of gpu_requirements.txt, optionally only some names
    grep -v '^#' benchmarks/gpu_requirements.txt | grep -v '^$' | \
        if [ $# -gt 0 ]; then grep -E "^($(echo "$*" | tr ' ' '|'))=="; else cat; fi
}

prepare() {
    rm -rf "$ASSETS" && mkdir -p "$WHEELS" "$SOURCES"
    local binary
    binary=$(requirements | grep -v -E "^($(echo $SOURCE_ONLY | tr ' ' '|'))==")
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$WHEELS" $binary
    # shellcheck disable=SC2046
    "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$SOURCES" \
        $(requirements $SOURCE_ONLY)
    for name in $PURE_SOURCE; do
        "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" \
            "$SOURCES/$name"-*.tar.gz
        rm "$SOURCES/$name"-*.tar.gz
    done
    "$PYTHON" -c "from rlvr_jax import models; \
models.load_tokenizer('smollm2-135m-instruct').save_pretrained('$TOKENIZER')"
    du -sh "$ASSETS"
}

run() {
    local out=${1:-benchmarks/results/gpu_suite}
    shift || true
    [ -d "$WHEELS" ] && [ -d "$TOKENIZER" ] || {
        echo "no $WHEELS or $TOKENIZER: run 'bash benchmarks/gpu_suite.sh prepare' where PyPI" \
             "is reachable and copy $ASSETS along" >&2; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    "$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation \
        --upgrade --target "$SITE" "$SOURCES"/*.tar.gz ||
        echo "WARNING: $SOURCES did not build (no C compiler or Python headers?): the" \
             "rl_step part will fail to import reasoning_gym" >&2
    PYTHONPATH="$SITE:$PWD" "$PYTHON" -m benchmarks.gpu_suite --out-dir "$out" \
        --tokenizer "$TOKENIZER" "$@"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_suite.sh prepare | run [OUT_DIR [SUITE_ARGS...]]" >&2
       exit 2 ;;
esac
