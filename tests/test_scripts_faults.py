"""The scripts a reader can skip (tools.prepare, tools.experiment, tools.bench, sample.py) under
faults: inputs that are not text, kills during prepare's swap, a diverged count run, runs that
share a directory; and a table-driven campaign of nonsense values for every flag of theirs, each of
which must give a one-line message naming the flag and leave every file as it was, or be a
setting the script accepts."""
import functools
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

import sample
from data import get_tokenizer, read_checked_meta
from tools import bench, export, prepare as P
from tools import experiment as E
from tools import common
from tools.common import UserError, own_run_dir, parse_config
from test_prepare import documents

BYTE = get_tokenizer("byte")
ROOT_USER = os.geteuid() == 0  # root may write into read-only directories


def snapshot(folder):
    """Every entry under folder: file bytes, directories, links and their targets."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = ("link", os.readlink(path))
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = path.read_bytes()
    return out


def refusal(capsys, run, argv):
    """The message of a refused command line: the SystemExit's text, or the last line on stderr
    (argparse and the door write there). Fails unless it exits non-zero without a traceback."""
    with pytest.raises(SystemExit) as e:
        run(argv)
    err = capsys.readouterr().err
    assert e.value.code not in (0, None) and "Traceback" not in err
    if isinstance(e.value.code, str):
        return e.value.code
    return err.strip().splitlines()[-1]


def prepare_main(*args):
    P.main(["prepare", *map(str, args), "--tokenizer", "byte", "--workers", "1"])


def jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


# -----------------------------------------------------------------------------------------------
# prepare: inputs checked for meaning, UTF-16 files, an atomic swap

@pytest.fixture
def prepared(tmp_path):
    """A good prepared dataset in tmp_path/out, and its snapshot."""
    src = jsonl(tmp_path / "good.jsonl", [f"good document {i} " * 8 for i in range(40)])
    prepare_main("--input", src, "--out", tmp_path / "out", "--val_every", "10")
    return tmp_path / "out", snapshot(tmp_path / "out")


def test_input_without_usable_text_is_refused_and_the_dataset_kept(prepared, tmp_path, capsys):
    out, before = prepared
    rng = random.Random(0)
    files = {"empty.txt": b"", "blank.txt": b"\n  \n\n",
             "random.txt": rng.randbytes(20000),
             "nul.txt": b"a few words\n" + b"\x00" * 3000 + b"\nand more\n",
             "utf16_no_bom.txt": ("plain text, saved as UTF-16\n" * 50).encode("utf-16-le")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        said = refusal(capsys, lambda a: prepare_main(*a),
                       ["--input", tmp_path / name, "--out", out])
        assert str(tmp_path / name) in said, name
        assert snapshot(out) == before, name
    # Text, but fewer tokens than one batch of the smallest model: named by its flag.
    (tmp_path / "short.txt").write_text("only a few words\n")
    said = refusal(capsys, lambda a: prepare_main(*a),
                   ["--input", tmp_path / "short.txt", "--out", out])
    assert "--min_tokens 1,024" in said and snapshot(out) == before
    # The same file is fine when the user says so.
    prepare_main("--input", tmp_path / "short.txt", "--out", out, "--min_tokens", "10")
    assert documents(out) == ["only a few words\n"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_a_byte_order_mark_is_read_as_utf16(tmp_path, encoding):
    text = "Pause tokens, déjà vu: ünïcode ✓\n" * 60 + "last line\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # Python's utf-16-be writes no byte-order mark
    (tmp_path / "doc.txt").write_bytes(data)
    prepare_main("--input", tmp_path / "doc.txt", "--out", tmp_path / "out", "--val_every", "0")
    assert documents(tmp_path / "out") == [text]
    assert read_checked_meta(tmp_path / "out")["problems"] == {}


def test_damaged_utf16_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "cut.txt").write_bytes("some text\n".encode("utf-16") * 200 + b"\x00")
    said = refusal(capsys, lambda a: prepare_main(*a),
                   ["--input", tmp_path / "cut.txt", "--out", tmp_path / "out"])
    assert f"{tmp_path / 'cut.txt'} starts with a UTF-16 byte-order mark" in said
    assert not (tmp_path / "out").exists()


class Killed(BaseException):
    """A kill -9: nothing runs after it, so every later change to the disk fails too."""


def kill_at(monkeypatch, k):
    """Make the k-th change of a directory entry (a rename or a removal) the moment of the
    kill."""
    calls = [0]
    for name in ("replace", "unlink", "remove", "rmdir"):
        real = getattr(os, name)

        def change(*args, _real=real, **kwargs):
            calls[0] += 1
            if calls[0] >= k:
                raise Killed
            return _real(*args, **kwargs)
        monkeypatch.setattr(os, name, change)


def test_a_kill_at_any_point_of_prepare_keeps_one_whole_dataset(tmp_path, monkeypatch, capsys):
    old_docs = [f"old document {i} " * 12 for i in range(60)]
    new_docs = [f"new text {i} " * 6 for i in range(50)]
    old, new = jsonl(tmp_path / "old.jsonl", old_docs), jsonl(tmp_path / "new.jsonl", new_docs)
    flags = ["--val_every", "0", "--shard_tokens", "2000"]
    k, kinds = 1, set()
    while True:
        out = tmp_path / f"out{k}"
        prepare_main("--input", old, "--out", out, *flags)  # seven old shards
        with monkeypatch.context() as m:
            kill_at(m, k)
            try:
                prepare_main("--input", new, "--out", out, *flags)  # two new ones
                killed = False
            except Killed:
                killed = True
        capsys.readouterr()
        # Right after the kill: the old dataset whole, the new one whole, or a journal that
        # names the complete new one (never a mix that a run would accept).
        if (out / ".swap.json").exists():  # P.SWAP
            kinds.add("journal")
            try:  # meta.json is away while old and new shards lie side by side
                read_checked_meta(out)
                assert documents(out) in (old_docs, new_docs), k
            except UserError:
                assert not (out / "meta.json").exists()
            P.finish_or_remove_killed_runs(out)
            assert documents(out) == new_docs and not (out / ".swap.json").exists()
        else:
            read_checked_meta(out)
            kinds.add("old" if documents(out) == old_docs else "new")
            assert documents(out) in (old_docs, new_docs), k
        # The next run (its lock left by the killed process, which a real kill leaves stale)
        # finishes or cleans up, and leaves nothing hidden behind.
        (out / ".lock").unlink(missing_ok=True)
        prepare_main("--input", new, "--out", out, *flags)
        assert documents(out) == new_docs
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
        assert len(read_checked_meta(out)["train_shards"]) == 2  # and no old shard beside them
        if not killed:
            break
        k += 1
    print(f"{k} kill points")
    assert k > 8 and kinds == {"old", "new", "journal"}, (k, kinds)


def test_leftovers_of_a_killed_prepare_are_removed_with_a_note(prepared, tmp_path, capsys):
    out, _ = prepared
    left = out / ".prepare-k1ll3d00.tmp"
    left.mkdir()
    (left / "train_000000.bin").write_bytes(b"\x00" * 4096)
    prepare_main("--input", tmp_path / "good.jsonl", "--out", out)
    assert f"note: removed {left}" in capsys.readouterr().out and not left.exists()


def test_prepare_input_directory_and_output_locations_are_refused(tmp_path, capsys):
    src = jsonl(tmp_path / "good.jsonl", [f"good document {i} " * 8 for i in range(40)])
    said = refusal(capsys, lambda a: prepare_main(*a), ["--input", tmp_path, "--out", "o"])
    assert f"--input {tmp_path} is a directory" in said
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for out, words in (("", "--out is empty"), (tmp_path / "file", "is a file"),
                       (tmp_path / "dangling", "is a symlink to")):
        before = snapshot(tmp_path)
        said = refusal(capsys, lambda a: prepare_main(*a), ["--input", src, "--out", out])
        assert words in said and snapshot(tmp_path) == before


def test_two_prepares_of_one_output_cannot_run_at_once(prepared, tmp_path, capsys):
    out, before = prepared
    with own_run_dir(out, "--out"):
        said = refusal(capsys, lambda a: prepare_main(*a),
                       ["--input", tmp_path / "good.jsonl", "--out", out])
    assert f"--out {out} is in use by process {os.getpid()}" in said
    assert snapshot(out) == before


# -----------------------------------------------------------------------------------------------
# experiment: a diverged count run, devices, out_dir

def test_a_diverged_count_run_stops_naming_the_flag(tmp_path, capsys):
    for flag in ("--pretrain_lr", "--finetune_lr"):
        out = tmp_path / flag[2:]
        with pytest.raises(SystemExit) as e:
            E.main(["--smoke", "--seeds", "1", "--workers", "1", "--no-eqflops",
                    flag, "1e30", "--out_dir", str(out)])
        assert "the run diverged; lower " + flag in str(e.value.code)
        assert "| configuration" not in capsys.readouterr().out  # no table
        assert not (out / "compare.json").exists()


def test_experiment_refuses_devices_and_places_at_the_door(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [(["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
             (["--out_dir", str(tmp_path / "file")], "is a file, not a directory")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"))
    for flags, words in cases:
        assert words in refusal(capsys, E.main, ["--out_dir", str(tmp_path / "o"), *flags])
    assert sorted(os.listdir(tmp_path)) == ["file"]
    with own_run_dir(tmp_path / "busy"):
        said = refusal(capsys, E.main, ["--smoke", "--out_dir", str(tmp_path / "busy")])
    assert "--out_dir" in said and "is in use by process" in said


# -----------------------------------------------------------------------------------------------
# bench: the loader's seconds, and --json checked before the benchmark runs

def test_bench_refuses_bad_seconds_and_a_json_nowhere_before_running(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(bench, "bench", lambda cfg: pytest.fail("the benchmark ran"))
    for value in ("0", "-1", "nan", "inf", "1e400", "1e9"):
        said = refusal(capsys, bench.main, ["--loader_seconds", value])
        assert "--loader_seconds" in said, value
    said = refusal(capsys, bench.main, ["--json", str(tmp_path / "missing" / "b.json")])
    assert f"--json {tmp_path / 'missing' / 'b.json'}: the directory" in said
    assert "is a directory" in refusal(capsys, bench.main, ["--json", str(tmp_path)])


# -----------------------------------------------------------------------------------------------
# The campaign: every numeric and path flag of these scripts, given nonsense

NUMBERS = ["0", "-1", "inf", "nan", "1e400", ""]
PATHS = ["", "file", "dir", "dangling", "read-only"]

# flag: the values of NUMBERS it accepts (a range, as a test of the value)
RANGES = {">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0,
          "(0, 1)": lambda v: 0 < v < 1, "[0, 1)": lambda v: 0 <= v < 1,
          "[0, 1]": lambda v: 0 <= v <= 1, "1..9": lambda v: 1 <= v <= 9,
          "never": lambda v: False}
NUMERIC = {
    "prepare": {"--val_every": ">= 0", "--shard_tokens": ">= 1", "--min_tokens": ">= 0",
                "--workers": ">= 0"},
    "c4": {"--shards": ">= 1", "--workers": ">= 0"},
    "sample": {"--num_pauses_eval": ">= 0", "--num_samples": ">= 1", "--max_new_tokens": ">= 1",
               "--temperature": ">= 0", "--top_k": ">= 0", "--seed": ">= 0"},
    "bench": {"--batch_size": ">= 0", "--block_size": ">= 0", "--steps": ">= 0",
              "--warmup": ">= 0", "--rounds": ">= 0", "--num_pauses_eval": ">= 0",
              "--prompt_len": ">= 1", "--new_tokens": ">= 1", "--batch_prompts": ">= 1",
              "--batch_prompt_len": ">= 0", "--loader_seconds": "> 0",
              "--pause_frac": "(0, 1)", "--seed": ">= 0"},
    "experiment": {"--num_pauses": ">= 1", "--pause_frac": "[0, 1)", "--seeds": ">= 1",
                   "--seed": ">= 0", "--pretrain_steps": ">= 1", "--finetune_steps": ">= 1",
                   "--finetune_lr": "> 0", "--batch_size": ">= 1", "--warmup_steps": ">= 0",
                   "--weight_decay": ">= 0", "--n_eval": ">= 1", "--K": "1..9",
                   "--p_echo": "[0, 1]", "--p_cot": "[0, 1]", "--p_filler": "[0, 1)",
                   "--p_pmask": "[0, 1]", "--pretrain_lr": "> 0", "--n_layer": ">= 1",
                   "--n_embd": "never", "--n_head": ">= 1", "--block_size": "never",
                   "--workers": ">= 0"},
}
# path flag: the kinds of PATHS it accepts
PATH_FLAGS = {
    "prepare": {"--input": {"file"}, "--val_input": {"file"}, "--out": {"dir"}},
    "c4": {"--out": {"dir"}}, "task": {"--out": {"dir"}}, "gpt2": {"--out": {"dir"}},
    "export": {"--ckpt": set(), "--out": {"dir"}},
    "sample": {"--ckpt": set(), "--init_from": {""}},
    "bench": {"--json": {"", "file", "dangling"}},
    "experiment": {"--out_dir": {"dir"}},
}


def accepts(allowed, value):
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and RANGES[allowed](number)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory with a text file, a directory, a dangling link and a read-only
    directory, and the command lines of every script, each with good values for the rest."""
    monkeypatch.chdir(tmp_path)
    # The help texts are read from the source at every parse (65 ms); once is enough here.
    monkeypatch.setattr(common, "field_comments", functools.cache(common.field_comments))
    text = jsonl(tmp_path / "text.jsonl", [f"document {i} " * 30 for i in range(40)])
    val = jsonl(tmp_path / "val.jsonl", ["a validation document"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "dir").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    if ROOT_USER:  # what the door sees of it as any other user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and
                            not str(path).startswith(str(tmp_path / "ro")))
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    paths = {"": "", "dir": str(tmp_path / "dir"), "dangling": str(tmp_path / "dangling"),
             "read-only": str(tmp_path / "ro" / "sub")}
    files = {"--input": text, "--val_input": val, "--ckpt": tmp_path / "junk.pt",
             "--init_from": tmp_path / "junk.pt", "--json": tmp_path / "text.jsonl",
             "--out": text, "--out_dir": text}
    base = {"prepare": ["prepare", "--input", str(text), "--out", "out", "--tokenizer", "byte"],
            "c4": ["c4", "--shards", "1", "--out", "out"], "task": ["task", "gsm8k", "--out", "o"],
            "gpt2": ["gpt2", "gpt2", "--out", "o"],
            "export": ["--ckpt", str(tmp_path / "junk.pt"), "--out", "o"],
            "sample": ["--ckpt", str(tmp_path / "junk.pt"), "--device", "cpu"],
            "bench": ["--device", "cpu"], "experiment": ["--device", "cpu", "--out_dir", "o"]}
    yield tmp_path, paths, files, base
    (tmp_path / "ro").chmod(0o755)


def door(script):
    """The script's door alone: its command line parsed and checked, no work."""
    if script in ("prepare", "c4", "task", "gpt2"):
        return P.parse_command
    return {"export": lambda a: parse_config(export.ExportConfig, "", a),
            "sample": lambda a: sample.parse_config(sample.SampleConfig, "", a),
            "bench": bench.parse_args, "experiment": E.parse_args}[script]


def full_run(script):
    """The script's main(), for a value the door lets through that the work must refuse."""
    if script in ("prepare", "c4", "task", "gpt2"):
        return P.main
    return {"export": export.main, "sample": sample.main}[script]


def campaign_cases(paths, files):
    for script, flags in NUMERIC.items():
        for flag, allowed in flags.items():
            for value in NUMBERS:
                yield script, flag, value, accepts(allowed, value)
    for script, flags in PATH_FLAGS.items():
        for flag, allowed in flags.items():
            for kind in PATHS:
                value = str(files[flag]) if kind == "file" else paths[kind]
                yield script, flag, value, kind in allowed


def with_flag(argv, flag, value):
    """argv with flag set to value (replacing its earlier value, if any)."""
    argv = list(argv)
    if flag in argv:
        del argv[argv.index(flag):argv.index(flag) + 2]
    return argv + [flag, value]


def test_campaign_every_flag_survives_nonsense(sandbox, capsys):
    tmp_path, paths, files, base = sandbox
    before = snapshot(tmp_path)
    wrong, count = [], 0
    for script, flag, value, accepted in campaign_cases(paths, files):
        count += 1
        argv = with_flag(base[script], flag, value)
        case = f"{script} {flag} {value!r}"
        try:
            door(script)(argv)
            said = None
        except SystemExit as e:
            err = capsys.readouterr().err
            said = e.code if isinstance(e.code, str) else err.strip().splitlines()[-1]
            if e.code in (0, None) or "Traceback" in err:
                wrong.append(f"{case}: exit {e.code} {err[-200:]}")
        if said is None and not accepted and script in ("sample", "export"):
            try:  # the file passed the door (it exists); reading it must refuse it
                full_run(script)(argv)
                wrong.append(f"{case}: accepted")
            except SystemExit as e:
                said = str(e.code)
        if accepted and said is not None:
            wrong.append(f"{case}: refused ({said})")
        named = flag in str(said) or (value and value in str(said))
        if not accepted and said is not None and not named:
            wrong.append(f"{case}: message without the flag ({said})")
        if not accepted and said is None:
            wrong.append(f"{case}: accepted")
        if snapshot(tmp_path) != before:
            wrong.append(f"{case}: changed the files")
            before = snapshot(tmp_path)
    assert count > 250 and not wrong, "\n".join(wrong)
