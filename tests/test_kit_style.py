"""How the method's files read: the share of argument checks in pause.py (the method, with little
ceremony) and the line density of pause.py and model.py, as the house rules measure them.

    python tests/test_kit_style.py pause.py model.py      # prints the figures

Code lines are the lines that hold code: not blank, not only a comment, not a docstring. Check lines
are those of `assert` and `raise` statements, of an `if` whose body only raises, and of functions
whose name starts with check or _check.
"""
import ast
import io
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def docstring_lines(tree):
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            is_text = isinstance(getattr(first, "value", None), ast.Constant) and \
                isinstance(first.value.value, str)
            if isinstance(first, ast.Expr) and is_text:
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source, tree):
    """The numbers of the lines that hold a token of code."""
    kinds = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
             tokenize.ENDMARKER, tokenize.ENCODING}
    found = set()
    for tok in tokenize.tokenize(io.BytesIO(source.encode()).readline):
        if tok.type not in kinds:
            found.update(range(tok.start[0], tok.end[0] + 1))
    return found - docstring_lines(tree)


def check_lines(tree):
    lines = set()

    def span(node):
        lines.update(range(node.lineno, node.end_lineno + 1))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assert, ast.Raise)):
            span(node)
        elif isinstance(node, ast.If) and not node.orelse and \
                all(isinstance(s, ast.Raise) for s in node.body):
            span(node)
        elif isinstance(node, ast.FunctionDef) and node.name.lstrip("_").startswith("check"):
            span(node)
    return lines


def figures(path):
    """{lines, mean (non-blank line length), at95 (% of lines of 95+ characters), checks (% of
    code lines that check arguments)} of one file."""
    source = Path(path).read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    non_blank = [line for line in lines if line.strip()]
    code = code_lines(source, tree)
    return {"lines": len(lines),
            "mean": sum(map(len, non_blank)) / len(non_blank),
            "at95": 100 * sum(len(line) >= 95 for line in lines) / len(lines),
            "checks": 100 * len(check_lines(tree) & code) / len(code)}


@pytest.mark.parametrize("name", ["pause.py", "model.py"])
def test_the_method_files_have_air(name):
    got = figures(ROOT / name)
    assert got["lines"] <= 400, f"{name} has {got['lines']} lines (at most ~400)"
    assert got["mean"] <= 56, f"{name}: mean non-blank line {got['mean']:.1f} chars (<= 56)"
    assert got["at95"] <= 8, f"{name}: {got['at95']:.1f}% of lines at 95+ chars (<= 8%)"


def test_pause_py_is_the_method_not_its_checks():
    got = figures(ROOT / "pause.py")
    assert got["checks"] <= 10, f"argument checks are {got['checks']:.1f}% of pause.py's code"
    # It imports nothing of the project: a student opens it first.
    tree = ast.parse((ROOT / "pause.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"torch"}, imported


def test_model_py_knows_nothing_of_pauses():
    assert "pause" not in (ROOT / "model.py").read_text().lower()


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        f = figures(arg)
        print(f"{arg}: {f['lines']} lines, mean {f['mean']:.1f} chars, {f['at95']:.1f}% at 95+, "
              f"checks {f['checks']:.1f}% of code lines")
