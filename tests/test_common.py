import contextlib
import errno
import io
import json
import math
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from tools.checkpoint import checkpoint_kind, read_checkpoint, save_checkpoint
from tools.common import (UserError, append_jsonl, atomic_write, config_parser, own_run_dir,
                          read_jsonl, remove_interrupted_writes, require_writable_dir,
                          resolve_device, resolve_dtype, write_json)


@dataclass
class Settings:
    # a section comment is not a field's help
    rate: float = 0.5      # how fast, in % per step
    mode: str = "fast"     # the kind of run
    steps: int = 10        # how many; 1e3 is accepted too
    loud: bool = False     # print more


def help_of(parser):
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        parser.parse_args(["--help"])
    return " ".join(out.getvalue().split())


def test_help_shows_each_fields_comment_default_and_choices():
    text = help_of(config_parser(Settings, "A tool.", choices={"mode": ["fast", "slow"]}))
    assert "--rate RATE how fast, in % per step (default: 0.5)" in text
    assert "--mode MODE the kind of run (choices: fast, slow) (default: fast)" in text
    assert "--steps STEPS how many; 1e3 is accepted too (default: 10)" in text
    assert "--loud, --no-loud print more (default: False)" in text
    assert "section comment" not in text


def test_parsed_flags_have_the_fields_types():
    parser = config_parser(Settings, "", choices={"mode": ["fast", "slow"]})
    args = parser.parse_args(["--steps", "2e3", "--loud", "--rate", "0.25"])
    assert (args.steps, args.loud, args.rate, args.mode) == (2000, True, 0.25, "fast")
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["--steps", "2.5"])
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["--mode", "medium"])


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the last good one")

    def fail_half_way(f):
        f.write(b"half of the new")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, fail_half_way)
    assert path.read_bytes() == b"the last good one"
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # the temporary file is gone

    def full_disk(f):
        f.write(b"half of the new")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(UserError, match="cannot write .*ckpt.pt: no space left on the disk"):
        atomic_write(path, full_disk)
    assert path.read_bytes() == b"the last good one" and os.listdir(tmp_path) == ["ckpt.pt"]
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    # mkstemp alone would leave every checkpoint 0600, unreadable to the user's group
    before = os.umask(0o022)
    try:
        for umask in (0o022, 0o077, 0o002):
            os.umask(umask)
            plain, atomic = tmp_path / f"plain{umask}", tmp_path / f"atomic{umask}.pt"
            with open(plain, "wb") as f:
                f.write(b"x")
            save_checkpoint({"x": torch.ones(1)}, atomic)
            assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
            assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(before)


def test_atomic_write_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "ckpt.pt.tmp").symlink_to(victim)
    save_checkpoint({"x": torch.ones(2)}, tmp_path / "ckpt.pt")
    assert victim.read_text() == "precious"
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=True)["x"], torch.ones(2))


def test_json_files_hold_null_for_nan_and_infinity(tmp_path):
    write_json({"a": math.nan, "b": [1.5, math.inf], "c": {"d": -math.inf}}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.5, None],
                                                             "c": {"d": None}}
    append_jsonl({"step": 1, "loss": math.nan}, tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1, "loss": null}\n'


def test_read_jsonl_drops_a_half_last_line_and_names_a_bad_one(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "dropped its last line" in capsys.readouterr().out
    path.write_text('{"step": 1}\n{"step": 2,,}\n{"step": 3}\n')
    with pytest.raises(UserError, match="m.jsonl, line 2: not valid JSON"):
        read_jsonl(path)


def test_checkpoints_are_told_apart(tmp_path):
    base = {"model": {}, "model_config": {}, "tokenizer": "byte"}
    pretraining = {**base, "optimizer": {}, "loader": {}, "step": 3}
    assert checkpoint_kind(pretraining) == "pretraining"
    assert checkpoint_kind({**base, "finetune_config": {}}) == "finetuned"
    assert checkpoint_kind({"state_dict": {}}) == checkpoint_kind([1]) == "foreign"
    torch.save({**base, "finetune_config": {}}, tmp_path / "ft.pt")
    with pytest.raises(UserError, match="ft.pt is a finetuned checkpoint .* but a pretraining"):
        read_checkpoint(tmp_path / "ft.pt", kind="pretraining")
    assert read_checkpoint(tmp_path / "ft.pt")["tokenizer"] == "byte"
    torch.save({"wte.weight": torch.zeros(2)}, tmp_path / "hf.bin")
    with pytest.raises(UserError, match="found a dict with the keys wte.weight"):
        read_checkpoint(tmp_path / "hf.bin")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="junk.pt: not a checkpoint this project can read"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.pt")


def test_device_and_dtype_are_checked():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="--device must be auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda:1: this machine has no CUDA GPU"):
            resolve_device("cuda:1")
    assert resolve_dtype("auto", "cpu")[0] == "float32"
    with pytest.raises(UserError, match="--dtype must be auto, float32 or bfloat16"):
        resolve_dtype("float16", "cpu")


def test_a_full_disk_inside_torch_save_is_named(tmp_path):
    # What torch.save's zip writer raises when the disk fills (seen on a 1 MB tmpfs): no file
    # named, no cause given.
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the last good one")

    def full_disk(f):
        f.write(b"part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(UserError, match="cannot write .*ckpt.pt: no space left on the disk"):
        atomic_write(path, full_disk)
    assert path.read_bytes() == b"the last good one" and os.listdir(tmp_path) == ["ckpt.pt"]
    with pytest.raises(UserError, match="ckpt.pt: no space left"):
        atomic_write(path, raising(RuntimeError("PytorchStreamWriter failed writing file "
                                                "data/0: file write failed")))
    # Any other error of the writer is left as it is: it is not a full disk.
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(path, raising(RuntimeError("a bug")))
    assert path.read_bytes() == b"the last good one" and os.listdir(tmp_path) == ["ckpt.pt"]


def raising(error):
    def write(f):
        raise error
    return write


def test_remove_interrupted_writes(tmp_path, capsys):
    (tmp_path / ".ckpt.pt.x1y2.tmp").write_bytes(b"a checkpoint cut short by a kill")
    (tmp_path / ".metrics.jsonl.ab12.tmp").write_text("")
    (tmp_path / ".other.ab12.tmp").write_text("not ours")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    remove_interrupted_writes(tmp_path, ["ckpt.pt", "metrics.jsonl"])
    assert sorted(os.listdir(tmp_path)) == [".other.ab12.tmp", "ckpt.pt"]
    assert capsys.readouterr().out.count("left by a write that was interrupted") == 2


def test_require_writable_dir(tmp_path):
    require_writable_dir(str(tmp_path), "--out_dir")  # exists
    require_writable_dir(str(tmp_path / "a" / "b"), "--out_dir")  # can be made
    assert os.listdir(tmp_path) == []  # and the check made nothing
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    cases = {"": "--out_dir is empty", "file": "file is a file, not a directory",
             "file/sub": "file is a file, not a directory",
             "link": "link is a symlink to .*gone, which does not exist",
             "link/sub": "link is a symlink"}
    for path, message in cases.items():
        with pytest.raises(UserError, match=message):
            require_writable_dir(str(tmp_path / path) if path else "", "--out_dir")


HOLD = """
import sys, time
from tools.common import own_run_dir
with own_run_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_run_dir_has_one_owner(tmp_path, capsys):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"--out_dir .*o is in use by process {holder.pid}"):
            with own_run_dir(str(out)):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is stale, and the next run takes it over, with a note.
    with own_run_dir(str(out)):
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
        (out / "result").write_text("")
    assert "taken over" in capsys.readouterr().out
    assert os.listdir(out) == ["result"]  # the lock is released on exit
    # A directory that own_run_dir made, and that the run left empty, is removed again.
    with pytest.raises(ValueError):
        with own_run_dir(str(tmp_path / "refused")):
            raise ValueError("refused before any output")
    assert not (tmp_path / "refused").exists()
