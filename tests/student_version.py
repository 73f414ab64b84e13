"""
Write the student version of this repository: a copy in which the bodies of the exercise functions
are replaced by `raise NotImplementedError(...)` naming the paper's section, their docstrings kept.
The same tests grade both versions: `python -m pytest tests -m exercises` passes on the reference
and fails on the student version until the exercises are written (docs/teaching.md); once they
are, the whole suite passes there (tests that need a hidden solution are skipped, saying why).

    python tests/student_version.py --out ../pause-student
    python tests/student_version.py --out DIR --functions pause.insert_pauses pause.pause_targets

The functions are found by parsing the modules (ast), so the reference code carries no markers.
A function is blanked only if a grader exists for it: a test marked `exercises` in
tests/test_exercises.py whose name holds the function's name (the six exercises have theirs).
The few functions of the tests that solve an exercise (a plain twin, the graders' own check) are
blanked as well unless --hide is given an empty list.
"""
import argparse
import ast
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The exercises in the order docs/teaching.md teaches them: what each is, and its tests' -k name.
EXERCISES = {
    "pause.insert_pauses": ("pause-pretraining, M_pt pauses at random, trimmed, paper Sec. 3.1",
                            "insert_pauses"),
    "pause.pause_targets": ("pause-pretraining, no loss on pause targets, paper Sec. 3.1",
                            "pause_targets"),
    "pause.pause_pretrain_batch": ("the pause step of the pretraining loader, paper Sec. 3.1",
                                  "pause_pretrain_batch"),
    "pause.finetune_example": ("pause-finetuning rows, paper Sec. 3.2", "finetune_example"),
    "model.GPT.generate": ("decoding with a KV cache, the decoder of pause-inference "
                           "(paper Sec. 3.3)", "gpt_generate"),
    "pause.pause_generate": ("pause-inference, paper Sec. 3.3", "pause_generate"),
}


# Solutions of exercises that the tests hold (plain twins, the graders' own check): hidden too.
SOLUTIONS = {
    "tests.test_pause.insert_pauses_loop": "the plain loop twin of insert_pauses",
    "tests.test_exercises.insert_pauses_randperm": "a correct insert_pauses, written differently",
    "tests.test_exercises.insert_pauses_multinomial": "a correct insert_pauses, written "
                                                      "differently",
}


def is_blanked(fn):
    """Whether fn's body (after its docstring) is the one raise NotImplementedError this script
    writes: True in the student version for the exercises and the hidden solutions. Tests that need
    a hidden solution are skipped there with this."""
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    return len(body) == 1 and isinstance(body[0], ast.Raise) and \
        "NotImplementedError" in ast.unparse(body[0])


def repository_files():
    """The files a clone holds: git's tracked and not-ignored files, or, without git, a walk that
    skips git's folder, caches and run outputs."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=ROOT, capture_output=True,
                                check=True).stdout
        # a file deleted but not yet committed is still listed by --cached
        return sorted(p for p in {Path(p) for p in listed.decode().split("\0") if p}
                      if (ROOT / p).is_file())
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__", ".pytest_cache", "data_cache", "runs"}
        return sorted(p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file() and not any(
            part in skip or part.startswith("out") for part in p.relative_to(ROOT).parts))


def find_functions(tree):
    """{'Class.method' or 'function': its ast node} for the module's functions and methods."""
    found = {}

    def visit(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + node.name] = node
    visit(tree.body, "")
    return found


def blank(source, nodes):
    """The source with each function's body, after its docstring, replaced by one raise.
    nodes: {name: (its ast node, the message as strings, one line each)}."""
    lines = source.splitlines(keepends=True)
    # From the bottom up, so that the line numbers of the functions above stay valid.
    for node, message in sorted(nodes.values(), key=lambda item: -item[0].lineno):
        first = node.body[0]
        start = first.end_lineno if ast.get_docstring(node) is not None else first.lineno - 1
        indent = " " * first.col_offset
        text = "".join(f'\n{indent}    "{part}"' for part in message)
        lines[start:node.end_lineno] = [f"{indent}raise NotImplementedError({text})\n"]
    return "".join(lines)


def locate(name):
    """'pause.insert_pauses' or 'tests.test_pause.insert_pauses_loop' -> (module file, function's
    name in it, its ast node); None when there is no such function."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = Path(*parts[:i]).with_suffix(".py")
        if (ROOT / path).is_file():
            qualname = ".".join(parts[i:])
            node = find_functions(ast.parse((ROOT / path).read_text(), str(path))).get(qualname)
            return (str(path), qualname, node) if node else None
    return None


def graders():
    """The names of the tests marked `exercises` in tests/test_exercises.py."""
    tree = ast.parse((ROOT / "tests" / "test_exercises.py").read_text())
    return [f.name for f in tree.body if isinstance(f, ast.FunctionDef)
            and f.name.startswith("test_")
            and any("exercises" in ast.unparse(d) for d in f.decorator_list)]


def grader_key(name):
    """The -k expression that selects the graders of a function: its exercise's, or its name."""
    return EXERCISES[name][1] if name in EXERCISES else name.split(".")[-1]


def plan(functions, hidden):
    """{module file: new source} with the functions blanked; every name is checked first."""
    wanted = {}
    for flag, names in (("--functions", functions), ("--hide", hidden)):
        for name in names:
            found = locate(name)
            if found is None:
                raise SystemExit(f"{flag}: unknown function {name!r} (write module.function or "
                                 f"module.Class.method of a module in {ROOT}); the exercises are: "
                                 f"{' '.join(EXERCISES)}")
            path, qualname, node = found
            k = grader_key(name)
            if flag == "--functions" and not any(k.lower() in t.lower() for t in graders()):
                raise SystemExit(f"--functions: {name} has no grader (no test marked exercises in "
                                 f"tests/test_exercises.py has {k!r} in its name), so nothing "
                                 "would grade it; write one, or choose among the graded "
                                 f"functions: {' '.join(EXERCISES)}")
            if node.body[0].lineno == node.lineno:
                raise SystemExit(f"{flag}: {name} is written on one line with its def; "
                                 "put its body on lines of its own")
            if name in hidden:
                message = (f"Hidden in the student version: {SOLUTIONS.get(name, 'a solution')}.",)
            else:
                what = EXERCISES[name][0] if name in EXERCISES else f"write {qualname}"
                message = (f"Exercise: {what}.",
                           f" Grade it with: python -m pytest tests -m exercises -k {k}")
            wanted.setdefault(path, {})[qualname] = (node, message)
    sources = {}
    for path, nodes in wanted.items():
        sources[path] = blank((ROOT / path).read_text(), nodes)
        compile(sources[path], path, "exec")  # the student version must still import
    return sources


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="new (or empty) directory for the student version (required)")
    parser.add_argument("--functions", nargs="+", default=list(EXERCISES), metavar="NAME",
                        help="functions whose bodies to blank, as module.function or "
                             "module.Class.method; each needs a grader (a test marked "
                             "exercises with its name) (default: %(default)s)")
    parser.add_argument("--hide", nargs="*", default=list(SOLUTIONS), metavar="NAME",
                        help="functions of the tests that solve an exercise, blanked too; "
                             "--hide alone keeps them (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"--out {out} exists and is not an empty directory; "
                         "choose a new directory, the student version is never written over files")
    sources = plan(args.functions, args.hide)
    files = repository_files()
    # Written beside the target and renamed into place at the end: never a half-made copy.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the copy is an ordinary directory
    try:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if str(rel) in sources:
                (tmp / rel).write_text(sources[str(rel)])
                shutil.copymode(ROOT / rel, tmp / rel)
            else:
                shutil.copy2(ROOT / rel, tmp / rel)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote the student version to {out}: {len(files)} files; exercises: "
          f"{' '.join(args.functions)}; hidden: {' '.join(args.hide) or 'nothing'}")


if __name__ == "__main__":
    sys.exit(main())
