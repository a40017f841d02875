"""The chips users rent, with their data-sheet figures: one table, read by the compile check
(``rlvr_jax.compile_check``: memory per chip) and the benchmarks (``benchmarks/harness.py``:
peak FLOP/s and bandwidth).

Figures are per chip, dense (no sparsity) bf16 peaks, from the vendors' data sheets:

* TPU v4: https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s, 32 GiB HBM2, 1200 GB/s);
* TPU v5e: https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s, 16 GiB HBM2, 819 GB/s);
* TPU v5p: https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s, 95 GiB HBM2e, 2765 GB/s);
* TPU v6e: https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s, 32 GiB HBM, 1640 GB/s);
* NVIDIA H100 / H200 / A100 / L4: the product data sheets on nvidia.com (H100 SXM and PCIe,
  H100 NVL, H200 SXM, A100 SXM4 / PCIe 40 and 80 GB, L4).

Google's pages print the TPU capacities as "GB"; the chips hold binary gibibytes (a v5e exposes
about 15.75 GiB to XLA after its runtime's reserve), so they are entered here as GiB. NVIDIA's
"80GB" is likewise the marketing size of 80 GiB parts; GPUs are entered in decimal GB as
printed, the smaller and so the safer reading for a fits / does-not-fit verdict.
"""

from __future__ import annotations

import dataclasses

GIB = 2**30
GB = 10**9


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One chip's data-sheet figures.

    Attributes:
      device_kind: the words of ``jax.Device.device_kind`` that name the chip.
      bf16_tflops: dense bf16 peak, TFLOP/s.
      bandwidth_gbs: memory bandwidth, GB/s.
      memory_bytes: memory per chip (HBM), bytes.
      platform: ``"tpu"`` or ``"gpu"``.
    """

    device_kind: str
    bf16_tflops: float
    bandwidth_gbs: float
    memory_bytes: int
    platform: str

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


ACCELERATORS: dict[str, Accelerator] = {
    # Keyed by the short name a compile check's --topology uses ("v5p:2x2x2", "h100:8").
    "v4": Accelerator("TPU v4", 275.0, 1200.0, 32 * GIB, "tpu"),
    "v5e": Accelerator("TPU v5 lite", 197.0, 819.0, 16 * GIB, "tpu"),
    "v5p": Accelerator("TPU v5", 459.0, 2765.0, 95 * GIB, "tpu"),
    "v6e": Accelerator("TPU v6 lite", 918.0, 1640.0, 32 * GIB, "tpu"),
    # "NVIDIA H100 80GB HBM3" is the H100 SXM.
    "h100": Accelerator("H100 80GB HBM3", 989.0, 3350.0, 80 * GB, "gpu"),
    "h100-pcie": Accelerator("H100 PCIe", 756.0, 2000.0, 80 * GB, "gpu"),
    "h100-nvl": Accelerator("H100 NVL", 835.0, 3900.0, 94 * GB, "gpu"),
    "h200": Accelerator("H200", 989.0, 4800.0, 141 * GB, "gpu"),
    "a100-80gb": Accelerator("A100-SXM4-80GB", 312.0, 2039.0, 80 * GB, "gpu"),
    "a100-40gb": Accelerator("A100-SXM4-40GB", 312.0, 1555.0, 40 * GB, "gpu"),
    "a100-80gb-pcie": Accelerator("A100 80GB PCIe", 312.0, 1935.0, 80 * GB, "gpu"),
    "a100-40gb-pcie": Accelerator("A100-PCIE-40GB", 312.0, 1555.0, 40 * GB, "gpu"),
    "l4": Accelerator("L4", 121.0, 300.0, 24 * GB, "gpu"),
}


def get(name: str) -> Accelerator:
    """The chip called ``name`` (a key of :data:`ACCELERATORS`); ValueError listing them."""
    if name.lower() not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)}")
    return ACCELERATORS[name.lower()]


def from_device_kind(device_kind: str) -> Accelerator | None:
    """The chip whose ``device_kind`` words all occur in ``device_kind`` (the longest such
    name, so "TPU v5 lite" wins over "TPU v5"); None for a chip not in the table (a CPU)."""
    kind = device_kind.lower()
    for chip in sorted(ACCELERATORS.values(), key=lambda c: len(c.device_kind), reverse=True):
        if all(word in kind for word in chip.device_kind.lower().split()):
            return chip
    return None
