"""
The command-line campaign of train.py: every number and path flag given nonsense, typed as a
careless user would, through train.main. Each case ends in one line that names the flag and a
non-zero exit with nothing written, or in a correct result.
"""
import os
import subprocess
from dataclasses import fields

import pytest
import torch

from model import PRESETS
from tools.prepare import prepare
from tools.common import read_jsonl
from train import TrainConfig, main, parse_args

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--builtin_docs", "200", "--eval_iters", "2", "--max_steps", "2"]
NUMBERS = [f.name for f in fields(TrainConfig) if f.type in (int, float)]
# Where 0 means nothing (no steps, no batch, a zero rate); everywhere else --help says what 0
# means, and test_zero_means_what_help_says runs those meanings together.
ZERO_REFUSED = {"batch_size", "max_steps", "builtin_docs", "log_interval", "eval_iters", "lr"}
NONSENSE = ["-1", "inf", "nan", "1e400", ""]


def snapshot(root):
    """Every path under root with its size and modification time: what 'nothing written' means."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            seen[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return seen


def refused(argv, named, tmp_path, capsys):
    """main(argv) exits non-zero with one line that names the flag or file `named`, and writes
    nothing under tmp_path; returns that line."""
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    code = e.value.code
    # argparse and the door exit 2 and print their line; a refusal after the door is
    # main()'s SystemExit(message), which Python prints to stderr with exit status 1.
    line = capsys.readouterr().err if isinstance(code, int) else str(code)
    assert code not in (0, None), line
    assert len(line.strip().splitlines()) == 1 and "Traceback" not in line, line
    assert ": error: " in line and named in line, line  # argparse's prog: "train.py" in a shell
    assert snapshot(tmp_path) == before, line
    return line


@pytest.mark.parametrize("value", NONSENSE)
@pytest.mark.parametrize("flag", NUMBERS)
def test_nonsense_numbers_are_refused(tmp_path, capsys, flag, value):
    out = str(tmp_path / "o")
    refused(TINY + [f"--{flag}={value}", "--out_dir", out], f"--{flag}", tmp_path, capsys)


@pytest.mark.parametrize("flag", NUMBERS)
def test_zero_is_refused_or_allowed(tmp_path, capsys, flag):
    argv = TINY + [f"--{flag}", "0", "--out_dir", str(tmp_path / "o")]
    if flag in ZERO_REFUSED:
        refused(argv, f"--{flag}", tmp_path, capsys)
    else:
        cfg = parse_args(argv)  # checked at the door, as main() does
        assert getattr(cfg, flag) == 0


def test_zero_means_what_help_says(tmp_path):
    # Every flag that allows 0, at 0 together: the preset's shape, one micro-batch a step, no
    # warmup, a decay to 0, no clipping or decay, and one evaluation, at the end.
    zeros = [a for flag in NUMBERS if flag not in ZERO_REFUSED for a in (f"--{flag}", "0")]
    out = tmp_path / "o"
    out.mkdir()  # an existing empty directory is a fine --out_dir
    main(TINY + ["--max_steps", "3", "--log_interval", "1", *zeros, "--out_dir", str(out)])
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    tiny = PRESETS["tiny"]
    assert {k: ckpt["model_config"][k] for k in tiny} == tiny
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["tokens_seen"] for r in rows] == [4 * 256 * s for s in (1, 2, 3)]
    assert rows[0]["lr"] == 1e-3  # no warmup: the peak at once
    assert rows[2]["lr"] == pytest.approx(1e-3 * 0.25)  # cosine to 0: 1/4 of the peak at 2/3
    assert [("val_loss" in r) for r in rows] == [False, False, True]
    assert ckpt["step"] == 3 and ckpt["config"]["seed"] == 0


# -----------------------------------------------------------------------------------------------
# Path flags: empty, a file, a directory, a dangling symlink, a read-only directory.

@pytest.fixture
def read_only(tmp_path):
    """make(fill) -> a directory filled by fill(dir), then made read-only for this process:
    by its mode for a user, by a read-only tmpfs mount for root (whom modes do not stop)."""
    mounted = []

    def make(fill=lambda d: None):
        d = tmp_path / f"ro{len(mounted)}"
        d.mkdir()
        if os.geteuid() != 0:
            fill(d)
            for folder, _, files in os.walk(d):
                for name in files:
                    os.chmod(os.path.join(folder, name), 0o444)
                os.chmod(folder, 0o555)
            return d
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)],
                          capture_output=True).returncode:
            pytest.skip("root, and no tmpfs can be mounted: no read-only directory here")
        mounted.append(d)
        fill(d)
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        return d
    yield make
    for d in mounted:
        subprocess.run(["umount", str(d)], check=True)
    for folder, _, _ in os.walk(tmp_path):
        os.chmod(folder, 0o755)  # so that pytest can delete it


def test_out_dir_nonsense_is_refused(tmp_path, capsys, read_only):
    ro = read_only()
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    cases = {"": "--out_dir is empty", str(tmp_path / "file"): "is a file",
             str(tmp_path / "file" / "sub"): "is a file",
             str(tmp_path / "link"): "is a symlink to", str(ro): "is not writable",
             str(ro / "new"): "is not writable"}
    for out_dir, message in cases.items():
        line = refused(TINY + ["--out_dir", out_dir], "--out_dir", tmp_path, capsys)
        assert message in line


def test_resume_in_a_read_only_out_dir_is_refused(tmp_path, capsys, read_only):
    def a_run(d):
        main(TINY + ["--out_dir", str(d / "o")])
    ro = read_only(a_run)
    assert torch.load(ro / "o" / "ckpt.pt", weights_only=True)["step"] == 2
    line = refused(TINY + ["--max_steps", "3", "--resume", "--out_dir", str(ro / "o")],
                   "--out_dir", tmp_path, capsys)
    assert "is not writable" in line


def test_data_and_init_from_nonsense_is_refused(tmp_path, capsys):
    # Empty, both are the default (the built-in world; random weights), run by the tests above.
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    (tmp_path / "empty").mkdir()
    out = ["--out_dir", str(tmp_path / "o")]
    not_gpt2 = "is neither a GPT-2 checkpoint name"
    cases = {"--data": {"file": "is not a directory", "link": "is not a directory",
                        "empty": "holds no prepared data"},
             "--init_from": {"file": not_gpt2, "link": not_gpt2, "empty": "no config.json"}}
    for flag, messages in cases.items():
        for path, message in messages.items():
            value = str(tmp_path / path)
            # gpt2.py names the directory it looked in (which --init_from gave)
            named = value if message == "no config.json" else flag
            line = refused(TINY + [flag, value, *out], named, tmp_path, capsys)
            assert message in line, line


def test_a_read_only_data_directory_trains(tmp_path, read_only):
    def prepared(d):
        (tmp_path / "c.txt").write_text("Think before you speak. 12+34=46\n" * 400)
        prepare([str(tmp_path / "c.txt")], d / "data", "byte", workers=1)
    ro = read_only(prepared)
    main(TINY + ["--data", str(ro / "data"), "--out_dir", str(tmp_path / "o")])
    assert torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)["step"] == 2
