"""What every benchmark script shares: accelerators' data-sheet figures (the table of
``rlvr_jax.accelerators``), the record of the machine a result was measured on, tables on the
terminal and result files.

Results are JSON files in ``benchmarks/results/`` (:func:`result_path`). Run the scripts from
the repository root as modules, e.g. ``python -m benchmarks.train_step``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from rlvr_jax import accelerators

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def data_sheet(device_kind: str) -> accelerators.Accelerator | None:
    """The data sheet of the chip named by ``device_kind`` (``rlvr_jax.accelerators``)."""
    return accelerators.from_device_kind(device_kind)


def machine(**versions: str) -> dict[str, Any]:
    """The device (with its data sheet on a GPU or TPU), CPU count, load average and versions.

    Call it after measuring: the load average is the one at the end of the run. ``versions``
    adds libraries beside Python, JAX and NumPy.
    """
    import jax  # here, not above: the verifier benchmark measures host code without JAX
    import numpy as np

    device = jax.devices()[0]
    sheet = data_sheet(device.device_kind) if device.platform != "cpu" else None
    return {
        "device": {"platform": device.platform, "kind": device.device_kind,
                   "count": jax.device_count(),
                   "data_sheet": None if sheet is None else dataclasses.asdict(sheet)},
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "versions": {"python": sys.version.split()[0], "jax": jax.__version__,
                     "numpy": np.__version__, **versions},
    }


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> None:
    """Prints ``rows`` under ``header``, each column as wide as its widest cell.

    ``align`` has one ``<`` or ``>`` per column; by default the first column is left-aligned
    and the others right-aligned (numbers). Format numbers before passing them.
    """
    align = align or "<" + ">" * (len(header) - 1)
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True))
              .rstrip())


def result_path(name: str) -> str:
    """``benchmarks/results/<name>.json``, wherever the script runs from (a string, so that it
    can be a flag's default and be stored in a result)."""
    return str(RESULTS_DIR / f"{name}.json")


def read_result(path: str | os.PathLike) -> Any | None:
    """A result file's contents; None if there is none yet."""
    path = pathlib.Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def write_result(result: Any, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``result`` as indented JSON (creating the folder) and says where."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
