"""Keeping model answers away from ``eval``: third-party scorers may evaluate what they score.

Some reasoning-gym scorers pass the answer to SymPy's ``parse_expr`` or ``sympify`` (which
``eval`` it, with every built-in in reach) or to ``eval`` itself. An answer that is code would
run with the verifier worker's privileges, and could also make the scorer say "correct"
(``eval("type('E', (), {'__eq__': ...})()")`` beats an ``==`` check). Two guards, used by
``procedural_verifier`` in its worker processes:

* :func:`is_inert_expression`: the answer has the shape of a formula whose evaluation cannot
  run code: numbers, the operators ``+ - * / ^ % ! = < > | & ~``, brackets and commas,
  variable names of one letter (and digits), and the names in ``MATH_NAMES``. No quotes (no
  strings, hence nothing that could be turned into code), no ``.`` outside a number (no
  attribute access), no ``_``, no other name (no built-in such as ``__import__``, ``eval``,
  ``getattr`` or ``open``, no keyword such as ``lambda``). Evaluating such a text can only
  compute, so a scorer may ``eval`` it.
* :func:`no_dynamic_code`: every other answer is scored inside this context, in which an
  audit hook (installed once per process) refuses to compile any text that is neither a
  library file nor one of the ``trusted`` strings (the example's own reference data, which
  some scorers ``eval``), so no ``eval``/``exec``/``compile`` of the answer or of anything
  built from it can happen; it also refuses creating code objects directly, unpickling,
  process creation, sockets and ``ctypes``. A scorer that would evaluate such an answer gets
  a ``PermissionError`` instead; the answer scores 0 (as does one that a scorer would only
  have parsed with ``ast.literal_eval``: none of reasoning-gym's does). The hook is sound
  here because it acts before any of the answer could run: no model code ever executes in
  this process to tamper with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator

MAX_INERT_CHARS = 2000
MATH_NAMES = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot", "atan2",
    "sinh", "cosh", "tanh", "coth", "asinh", "acosh", "atanh", "exp", "log", "ln", "sqrt",
    "cbrt", "root", "Abs", "abs", "sign", "floor", "ceiling", "factorial", "binomial", "gcd",
    "lcm", "Max", "Min", "max", "min", "pi", "oo", "inf", "infinity", "True", "False",
    "and", "or", "not", "mod",
})
_TOKEN = re.compile(
    r"(?P<number>0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)"
    r"|(?P<name>[A-Za-z][A-Za-z0-9]*)"
    r"|(?P<operator>[-+*/^%!=<>|&~()\[\]{},])"
    r"|(?P<space>\s+)"
)
_VARIABLE = re.compile(r"[A-Za-z]\d*")
_REFUSED_EVENTS = ("code.__new__", "pickle.find_class", "os.system", "os.exec", "os.fork",
                   "os.posix_spawn", "os.spawn", "subprocess.Popen", "socket.", "ctypes.",
                   "os.kill", "shutil.", "os.remove", "os.rename", "os.rmdir", "os.unlink")
# Standard-library code that compiles text it generates itself from identifiers it checks
# (namedtuple's and dataclass's methods), e.g. while a scorer's lazy import runs.
_CODE_GENERATORS = frozenset(
    os.path.join(sysconfig.get_paths()["stdlib"], name)
    for name in ("collections/__init__.py", "dataclasses.py"))
_state: dict = {"installed": False, "trusted": None}  # trusted: None when not refusing


def is_inert_expression(answer: str) -> bool:
    """Whether evaluating ``answer`` as Python (or SymPy) can only compute (module doc)."""
    if len(answer) > MAX_INERT_CHARS:
        return False
    position = 0
    while position < len(answer):
        token = _TOKEN.match(answer, position)
        if token is None:
            return False
        name = token.group("name")
        if name is not None and name not in MATH_NAMES and not _VARIABLE.fullmatch(name):
            return False
        position = token.end()
    return True


def _loaded_from_file(filename: object) -> bool:
    return isinstance(filename, str) and os.path.isfile(filename)


def _text(source: object) -> str | None:
    if isinstance(source, bytes):
        return source.decode("utf-8", errors="replace").strip()
    return source.strip() if isinstance(source, str) else None  # an AST is never trusted


def _hook(event: str, args: tuple) -> None:
    trusted = _state["trusted"]
    if trusted is None:
        return
    if event == "compile":
        source, filename = args
        caller = sys._getframe(1).f_code.co_filename  # the Python code that asked to compile
        if not (_loaded_from_file(filename) or _text(source) in trusted
                or caller in _CODE_GENERATORS):
            raise PermissionError("answer guard: compiling this text is not allowed here")
    elif event.startswith(_REFUSED_EVENTS):
        raise PermissionError(f"answer guard: {event} is not allowed here")


@contextlib.contextmanager
def no_dynamic_code(trusted: Iterable[str] = ()) -> Iterator[None]:
    """While inside, this process compiles no text but library files and the ``trusted``
    strings, and refuses the events in ``_REFUSED_EVENTS`` (see the module docstring); the
    hook is added on first use."""
    if not _state["installed"]:
        sys.addaudithook(_hook)
        _state["installed"] = True
    _state["trusted"] = frozenset(text.strip() for text in trusted)
    try:
        yield
    finally:
        _state["trusted"] = None
