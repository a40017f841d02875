"""What crosses between the sandboxed program and its judge: framed JSON of plain values.

Standard library only (the sandbox launcher imports it). A frame is a 4-byte big-endian length
and that many bytes of UTF-8 JSON. Values are encoded so the reader rebuilds them from
built-in types alone: JSON's null, booleans, integers of at most 64 bits, floats (``NaN``
and ``Infinity`` included) and strings stand for themselves; every other value is a one-key
object naming its type (``{"int": "<hex>"}`` for a larger integer, ``{"list": [...]}``,
``{"tuple": ...}``, ``{"set": ...}``, ``{"frozenset": ...}``, ``{"dict": [[key, value], ...]}``,
``{"bytes": "<hex>"}``, ``{"complex": [re, im]}``).

:func:`decode` is what makes a sandboxed function's return value safe to compare outside: it
builds only exact built-in objects (never a subclass, never an object whose ``__eq__`` the
program wrote), refuses nesting deeper than ``MAX_DEPTH`` and anything it does not know, and
:func:`read_frame` refuses frames over a size limit. :func:`encode` refuses values of any
other type (the tests' arguments and a solution's results must be plain data).
"""

from __future__ import annotations

import json
import os
import select
import time

MAX_DEPTH = 64
MAX_FRAME_BYTES = 4 << 20
_INT_LIMIT = 1 << 63
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


class WireError(ValueError):
    """A value that cannot be encoded, or a frame that is not a valid message."""


class ClosedError(EOFError):
    """The other side closed the channel (it exited or was killed)."""


def encode(value: object, depth: int = 0) -> object:
    """``value`` as JSON-ready data (see the module docstring); raises WireError."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    kind = type(value)
    if kind is int and not -_INT_LIMIT <= value < _INT_LIMIT:
        return {"int": format(value, "x")}  # hex: no limit on digits, unlike decimal
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple, set, frozenset):
        items = value if kind in (list, tuple) else sorted(value, key=repr)
        return {kind.__name__: [encode(item, depth + 1) for item in items]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise WireError(f"a value of type {kind.__name__} is not plain data")


def decode(data: object, depth: int = 0) -> object:
    """The plain value ``data`` encodes, built from exact built-in types; raises WireError."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise WireError("malformed value")
    (tag, body), = data.items()
    if tag in _SEQUENCES and type(body) is list:
        items = [decode(item, depth + 1) for item in body]
        try:
            return _SEQUENCES[tag](items)
        except TypeError as error:  # an unhashable item in a set
            raise WireError(str(error)) from None
    if tag == "dict" and type(body) is list:
        pairs = [pair for pair in body if type(pair) is list and len(pair) == 2]
        if len(pairs) != len(body):
            raise WireError("malformed dict")
        try:
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
        except TypeError as error:
            raise WireError(str(error)) from None
    if tag == "int" and type(body) is str and len(body) <= MAX_FRAME_BYTES:
        try:
            return int(body, 16)
        except ValueError as error:
            raise WireError(str(error)) from None
    if tag == "bytes" and type(body) is str:
        try:
            return bytes.fromhex(body)
        except ValueError as error:
            raise WireError(str(error)) from None
    if (tag == "complex" and type(body) is list and len(body) == 2
            and all(type(part) in (int, float) for part in body)):
        return complex(*body)
    raise WireError(f"malformed value with tag {tag!r}")


def frame(message: object) -> bytes:
    """``message`` (JSON-ready) as one frame."""
    payload = json.dumps(message).encode()
    return len(payload).to_bytes(4, "big") + payload


def write_frame(fd: int, message: object) -> None:
    """Write ``message`` as one frame; raises ClosedError if the reader is gone."""
    data = frame(message)
    try:
        while data:
            data = data[os.write(fd, data):]
    except (BrokenPipeError, ConnectionResetError):
        raise ClosedError("the reader closed the channel") from None


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, remaining = [], size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("no message before the deadline")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise ClosedError("the writer closed the channel")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None,
               max_bytes: int = MAX_FRAME_BYTES) -> object:
    """One frame's message; ClosedError at end of stream, TimeoutError past ``deadline``
    (``time.monotonic()``), WireError for an oversized or invalid frame."""
    size = int.from_bytes(_read_exactly(fd, 4, deadline), "big")
    if size > max_bytes:
        raise WireError(f"a message of {size} bytes (the limit is {max_bytes})")
    try:
        return json.loads(_read_exactly(fd, size, deadline))
    except (ValueError, RecursionError) as error:
        raise WireError(f"invalid message: {error}") from None
