"""
How the code reads, in numbers: the figures that docs and reviews quote about this repository.

    python tests/style_figures.py            # this checkout
    python tests/style_figures.py --root DIR # another checkout, e.g. an older commit's worktree

It reads the files with Python's ast and tokenize modules and runs nothing of the project:
- checks: lines of argument checks and error text in pause.py, as a share of its code lines
  (assert statements, `raise` statements, `if` blocks whose body only raises, functions named
  _check* / check*), code lines being lines with a token that is not a comment or docstring;
- the lines of train() in train.py before its first top-level loop;
- how the scripts check their flags: a config dataclass with check() (the one idiom) and other
  ways (parser.error calls, SystemExit outside main());
- SystemExit in library modules (files without a __main__ block);
- line length on the reading path: mean non-blank line, share of lines at 95+ characters, size;
  packed assignments (a tuple of two or more targets given a tuple of values);
- import cycles between the project's modules, and project imports inside functions;
- top-level entries (git's tracked files, dotfiles and LICENSE left out) and top-level .py files.
"""
import argparse
import ast
import io
import subprocess
import tokenize
from pathlib import Path

READING_PATH = ["pause.py", "model.py", "data.py", "train.py", "finetune.py"]
SCRIPTS = ["train.py", "finetune.py", "sample.py", "tools/prepare.py", "tools/experiment.py",
           "tools/bench.py", "tools/export.py",
           "prepare.py", "experiment.py", "bench.py"]  # the last three: the layout before tools/


def tracked(root):
    out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout
    return out.split()


def code_lines(source):
    """Numbers of the lines that hold code: a token other than a comment, a docstring or layout."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                and isinstance(first.value.value, str):
            docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines - docstrings


def check_lines(source):
    """Lines of argument checks and error text (see the module's docstring)."""
    tree = ast.parse(source)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assert, ast.Raise)):
            spans.append(node)
        elif isinstance(node, ast.If) and all(isinstance(s, ast.Raise) for s in node.body) \
                and not node.orelse:
            spans.append(node)
        elif isinstance(node, ast.FunctionDef) and node.name.lstrip("_").startswith("check"):
            spans.append(node)
    return {i for n in spans for i in range(n.lineno, n.end_lineno + 1)}


def lines_before_loop(source, name="train"):
    """Lines from `def train` to its training loop: the first loop of 20 lines or more, also
    inside a with-block."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            loops = [s for s in ast.walk(node) if isinstance(s, (ast.For, ast.While))
                     and s.end_lineno - s.lineno >= 20]
            return min(s.lineno for s in loops) - node.lineno if loops else None
    return None


def packed_assignments(source):
    return sum(isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple)
               and isinstance(n.value, ast.Tuple) and len(n.value.elts) >= 2
               for n in ast.walk(ast.parse(source)))


def import_graph(root, files):
    mods = {f[:-3].replace("/", ".").removesuffix(".__init__"): f for f in files}
    graph, inner = {m: set() for m in mods}, []
    for m, f in mods.items():
        tree = ast.parse((root / f).read_text())
        in_function = {id(x) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                       for x in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                hit = n if n in mods else n.split(".")[0] if n.split(".")[0] in mods else None
                if hit and hit != m:
                    graph[m].add(hit)
                    if id(node) in in_function:
                        inner.append(f"{f}:{node.lineno}")
    return graph, sorted(set(inner))


def cycles(graph):
    def reaches(a, b, seen):
        return any(n == b or (n not in seen and reaches(n, b, seen | {n}))
                   for n in graph.get(a, ()))
    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a, set())})


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout to measure (default: this one)")
    root = Path(parser.parse_args().root)
    files = tracked(root)
    py = [f for f in files if f.endswith(".py") and not f.startswith("tests/")]

    source = (root / "pause.py").read_text()
    code = code_lines(source)
    checks = check_lines(source) & code
    print(f"pause.py: argument checks and error text {100 * len(checks) / len(code):.0f}% of "
          f"{len(code)} code lines")

    print(f"train.py: lines of train() before its loop: "
          f"{lines_before_loop((root / 'train.py').read_text())}")

    for f in SCRIPTS:
        if (root / f).is_file():
            text = (root / f).read_text()
            tree = ast.parse(text)
            outside_main = sum(isinstance(n, ast.Raise) and "SystemExit" in ast.unparse(n)
                               for fn in tree.body if isinstance(fn, ast.FunctionDef)
                               and fn.name != "main" for n in ast.walk(fn))
            door = "parse_config(" in text or "def check(self" in text
            print(f"{f}: a config dataclass with check() {'yes' if door else 'no'}, "
                  f"parser.error {text.count('parser.error(')}, "
                  f"SystemExit raised outside main() {outside_main}")

    library = {f: (root / f).read_text().count("SystemExit") for f in py
               if "__main__" not in (root / f).read_text()}
    print("SystemExit in library modules:",
          ", ".join(f"{f} {n}" for f, n in library.items() if n) or "none")

    total = 0
    for f in READING_PATH:
        lines = (root / f).read_text().splitlines()
        blank_free = [line for line in lines if line.strip()]
        mean = sum(map(len, blank_free)) / len(blank_free)
        wide = 100 * sum(len(line) >= 95 for line in lines) / len(lines)
        size = (root / f).stat().st_size
        packed = packed_assignments((root / f).read_text())
        total += size
        print(f"{f}: {len(lines)} lines, mean {mean:.1f} characters, {wide:.1f}% at 95+, "
              f"{size / 1000:.1f} KB, packed assignments {packed}")
    print(f"reading path: {total / 1000:.1f} KB")

    graph, inner = import_graph(root, py)
    print(f"import cycles: {cycles(graph) or 'none'}; imports inside functions: {inner or 'none'}")

    top = sorted({f.split("/")[0] for f in files} - {"LICENSE"})
    top = [t for t in top if not t.startswith(".")]
    print(f"top-level entries: {len(top)} ({' '.join(top)}); top-level .py files: "
          f"{sum(t.endswith('.py') for t in top)}")


if __name__ == "__main__":
    main()
