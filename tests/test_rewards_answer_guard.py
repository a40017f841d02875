"""The answer guard: which answers may reach a scorer's ``eval``, and the refusal of the rest."""

import subprocess
import sys
import textwrap

import pytest

from rlvr_jax.rewards.answer_guard import is_inert_expression


@pytest.mark.parametrize("answer", [
    "24", "-3.5e-2", "(4 + 6) * (1 + 1)", "-327405*y**6 + 934619*y**5", "x^3/3 + C",
    "2*sqrt(x) + log(Abs(x)) - atan(x)/3", "[1, 2, 3]", "{1, 2}", "0x3eb2", "x1 != x2",
    "factorial(5) >= 120 and not False", "pi/2",
])
def test_formulas_are_inert(answer):
    assert is_inert_expression(answer)


@pytest.mark.parametrize("answer", [
    "__import__('os').system('id')",
    "eval(x)",  # a built-in that is not a math function
    "open",
    "(1).real",  # attribute access
    "x.y",
    "lambda: 0",
    "[x for x in y]",  # a keyword
    "'text'",  # strings could be turned into code
    "S('x')",
    "getattr(x, y)",
    "srepr(x)",  # a sympy printer: returns a string
    "2 * x_1",  # underscores
    "a; b",
    "x" * 10 + "1",  # a long name
    "1" * 3000,  # too long to be an answer
])
def test_anything_that_could_run_code_is_not_inert(answer):
    assert not is_inert_expression(answer)


def test_no_dynamic_code_refuses_evaluation_but_not_imports_or_trusted_text(tmp_path):
    """Run in a fresh interpreter: the guard's audit hook stays in the process it is added to."""
    marker = tmp_path / "ran"
    script = textwrap.dedent(f"""
        import json
        from rlvr_jax.rewards.answer_guard import no_dynamic_code
        outcomes = {{}}
        def attempt(name, action):
            try:
                action()
                outcomes[name] = "ran"
            except PermissionError:
                outcomes[name] = "refused"
        with no_dynamic_code(trusted=["[1, 2] + [3]"]):
            attempt("eval", lambda: eval("__import__('os').mkdir({str(marker)!r})"))
            attempt("exec", lambda: exec("x = 1"))
            attempt("compile", lambda: compile("1 + 1", "<answer>", "eval"))
            attempt("parse_expr", lambda: __import__("sympy").parse_expr("x + 1"))
            attempt("pickle", lambda: __import__("pickle").loads(
                b"cos\\nsystem\\n(S'true'\\ntR."))
            attempt("trusted eval", lambda: eval("[1, 2] + [3]"))
            attempt("import", lambda: __import__("fractions"))
        attempt("eval after", lambda: eval("1 + 1"))
        print(json.dumps(outcomes))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == (
        '{"eval": "refused", "exec": "refused", "compile": "refused", "parse_expr": "refused", '
        '"pickle": "refused", "trusted eval": "ran", "import": "ran", "eval after": "ran"}')
    assert not marker.exists()
