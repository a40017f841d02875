"""Minimal, memory-mapped reader and writer of the safetensors format.

Format: an 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header),
then the raw little-endian data. Reading through `np.memmap` returns views, so a checkpoint is
paged in tensor by tensor instead of being copied whole; bfloat16 maps to `ml_dtypes`.
Errors name the file and the tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsFile(Mapping[str, np.ndarray]):
    """Read-only mapping name -> memory-mapped array of one `.safetensors` file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"safetensors file not found: {self.path}")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{self.path}: truncated safetensors file (no header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if 8 + header_len > size:
                raise ValueError(f"{self.path}: truncated safetensors file (header cut short)")
            try:
                header = json.loads(f.read(header_len))
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: corrupt safetensors header: {e}") from e
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        self._data_size = size - self._data_start
        self._header: dict[str, dict] = header
        for name, info in header.items():
            if info["dtype"] not in _DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype "
                                 f"{info['dtype']}")
            if info["data_offsets"][1] > self._data_size:
                raise ValueError(
                    f"{self.path}: truncated file: tensor {name!r} needs bytes up to "
                    f"{info['data_offsets'][1]} but only {self._data_size} data bytes exist"
                )

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._header:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        info = self._header[name]
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        if end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{self.path}: tensor {name!r} byte size does not match its shape")
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin,
                         shape=shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._header)

    def __len__(self) -> int:
        return len(self._header)


def save_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (NumPy arrays; bfloat16 via ml_dtypes) to a `.safetensors` file."""
    header: dict[str, dict] = {}
    offset = 0
    arrays = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _NAMES:
            raise ValueError(f"cannot save tensor {name!r} of dtype {array.dtype}")
        arrays[name] = array
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = metadata or {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in arrays.values():
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
