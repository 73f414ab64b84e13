"""How the method's files read: the share of argument checks in pause.py (the method, with little
ceremony) and the line density of pause.py and model.py, as the house rules measure them.

    python tests/test_kit_style.py pause.py model.py      # prints the figures

Code lines and check lines are counted as tests/style_figures.py counts them.
"""
import ast
import sys
from pathlib import Path

import pytest

from style_figures import check_lines, code_lines  # one definition of both, beside the figures

ROOT = Path(__file__).resolve().parent.parent


def figures(path):
    """{lines, mean (non-blank line length), at95 (% of lines of 95+ characters), checks (% of
    code lines that check arguments)} of one file."""
    source = Path(path).read_text()
    lines = source.splitlines()
    non_blank = [line for line in lines if line.strip()]
    code = code_lines(source)
    return {"lines": len(lines),
            "mean": sum(map(len, non_blank)) / len(non_blank),
            "at95": 100 * sum(len(line) >= 95 for line in lines) / len(lines),
            "checks": 100 * len(check_lines(source) & code) / len(code)}


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
