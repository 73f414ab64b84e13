"""
The fault campaign: kill -9 at random moments (one of them in the middle of a checkpoint write), a
full disk under the checkpoint and under the log, a half-written log line, a diverged run and a
planted symlink. After each, the user's next step (--resume, or a fresh start when no checkpoint
was written) must end bitwise where an uninterrupted run ends, with every step logged once.
"""
import errno
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from tools import common
from train import TrainConfig, train
from tools.common import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Checkpoints at steps 3, 6, 9 and 12; a log line every step; pauses, so the loader's random
# state matters too.
RUN = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, builtin_docs=200,
           eval_iters=2, lr=3e-3, min_lr=3e-4, warmup_steps=2, pause_frac=0.1, max_steps=12,
           log_interval=1, eval_interval=3)
FLAGS = [f"--{k}={v}" for k, v in RUN.items()]
ENV = dict(os.environ, OMP_NUM_THREADS="1")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run that every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(TrainConfig(**RUN, out_dir=str(out)))
    torch.set_num_threads(threads)
    return out


def rows(out):
    """metrics.jsonl, read strictly: NaN or Infinity would raise."""
    def refuse(word):
        raise ValueError(f"{word} in metrics.jsonl")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def finish(out):
    """What a user does after a crash: --resume if a checkpoint was written, else start again."""
    train(TrainConfig(**RUN, resume=(out / "ckpt.pt").exists(), out_dir=str(out)))


def assert_same_run(out, reference, context=""):
    timing = ("tokens_per_s", "mfu")
    a = [{k: v for k, v in r.items() if k not in timing} for r in rows(reference)]
    b = [{k: v for k, v in r.items() if k not in timing} for r in rows(out)]
    assert [r["step"] for r in b] == list(range(1, 13)), context
    assert a == b, context
    sa, sb = (torch.load(d / "ckpt.pt", weights_only=True) for d in (reference, out))
    assert (sa["step"], sa["loader"], sa["tokens_seen"]) == (sb["step"], sb["loader"],
                                                             sb["tokens_seen"]), context
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"]), context
    for p, state in sa["optimizer"]["state"].items():
        other = sb["optimizer"]["state"][p]
        assert all(torch.equal(v, other[k]) for k, v in state.items()), context
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")], context


def log_lines(out):
    try:
        with open(out / "metrics.jsonl") as f:
            return f.read().count("\n")
    except FileNotFoundError:
        return 0


def test_kill_at_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    seed = random.randrange(10 ** 6)
    rng = random.Random(seed)
    for trial in range(3):
        out = tmp_path / f"kill{trial}"
        # Killed once the log holds `lines` lines, after a random delay: in a step, an
        # evaluation or a checkpoint write, before the first checkpoint or after the last.
        lines, delay = rng.randint(1, 12), rng.uniform(0, 0.03)
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *FLAGS,
                                 "--out_dir", str(out)], env=ENV, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while log_lines(out) < lines and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
        proc.wait()
        finish(out)
        assert_same_run(out, reference, f"seed {seed}: killed after {lines} lines + {delay:.3f} s")


# Run train.py with torch.save replaced: the second checkpoint (step 6) is half written into its
# temporary file, then the process says so and waits for its kill.
KILLED_WHILE_SAVING = """
import io, sys, time, torch
real_save, saves = torch.save, []
def half_save(obj, f):
    saves.append(obj)
    if len(saves) == 2:
        data = io.BytesIO()
        real_save(obj, data)
        f.write(data.getvalue()[: len(data.getvalue()) // 2])
        f.flush()
        print("saving", flush=True)
        time.sleep(600)
    real_save(obj, f)
torch.save = half_save
import train
train.main(sys.argv[1:])
"""


def test_kill_during_a_checkpoint_write_keeps_the_last_one(tmp_path, reference, capsys):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_SAVING, *FLAGS, "--out_dir",
                             str(out)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    while (line := proc.stdout.readline()) and line.strip() != "saving":
        pass
    proc.kill()
    proc.wait()
    assert line.strip() == "saving", "the run ended before its second checkpoint"
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    assert [f for f in os.listdir(out) if f.startswith(".ckpt.pt.") and f.endswith(".tmp")]
    finish(out)
    assert "left by a write that was interrupted" in capsys.readouterr().out
    assert_same_run(out, reference)


def test_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, reference, monkeypatch):
    out = tmp_path / "o"
    real_save, saves = torch.save, []

    def full_disk(obj, f):
        saves.append(obj)
        if len(saves) == 2:  # step 6: some bytes reach the file, then the disk is full
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*ckpt.pt: no space left on the disk"):
        train(TrainConfig(**RUN, out_dir=str(out)))
    monkeypatch.undo()
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    assert sorted(os.listdir(out)) == ["ckpt.pt", "metrics.jsonl"]  # no temporary file left
    finish(out)
    assert_same_run(out, reference)


def test_full_disk_inside_torch_save_is_named_and_resumes(tmp_path, reference, monkeypatch):
    # torch.save's zip writer meets a full disk with this RuntimeError, naming no file.
    out = tmp_path / "o"
    real_save, saves = torch.save, []

    def full_disk(obj, f):
        saves.append(obj)
        if len(saves) == 2:
            f.write(b"\0" * 4096)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "4160 vs 4096")
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*ckpt.pt: no space left on the disk"):
        train(TrainConfig(**RUN, out_dir=str(out)))
    monkeypatch.undo()
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    assert sorted(os.listdir(out)) == ["ckpt.pt", "metrics.jsonl"]  # no temporary file, no lock
    finish(out)
    assert_same_run(out, reference)


def test_full_disk_during_a_log_line_leaves_whole_lines(tmp_path, reference, monkeypatch):
    out = tmp_path / "o"
    real_open, written = open, []

    class FullDisk:
        """A log file on a disk that fills up in the middle of the fifth line."""
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def tell(self):
            return self.f.tell()

        def write(self, data):
            written.append(data)
            if len(written) == 5:
                self.f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return FullDisk(f) if mode.startswith("a") else f
    monkeypatch.setattr(common, "open", open_on_full_disk, raising=False)
    with pytest.raises(UserError, match=r"cannot write .*metrics.jsonl: no space left"):
        train(TrainConfig(**RUN, out_dir=str(out)))
    monkeypatch.undo()
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]  # the half line was cut off again
    finish(out)
    assert_same_run(out, reference)


def test_a_half_written_last_log_line_is_dropped_on_resume(tmp_path, reference, capsys):
    out = tmp_path / "o"
    train(TrainConfig(**RUN, stop_after=6, out_dir=str(out)))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 4.1')  # a crash in the middle of a line
    finish(out)
    assert "dropped its last line, written only in part" in capsys.readouterr().out
    assert_same_run(out, reference)


def test_a_diverged_run_stops_before_its_checkpoint(tmp_path):
    out = tmp_path / "o"
    train(TrainConfig(**RUN, stop_after=3, out_dir=str(out)))
    good = (out / "ckpt.pt").read_bytes()
    # The same run resumed with an absurd learning rate: the loss turns NaN within a step or two,
    # before the checkpoint of step 6 could replace the good one.
    with pytest.raises(UserError, match=r"step [4-6]: loss nan; stopped without saving.*"
                                         r"--lr 100000000.0"):
        train(TrainConfig(**{**RUN, "lr": 1e8}, resume=True, out_dir=str(out)))
    assert (out / "ckpt.pt").read_bytes() == good
    assert all(r["step"] <= 6 for r in rows(out))  # strict JSON: no NaN was logged


def test_a_planted_symlink_is_never_followed(tmp_path):
    out = tmp_path / "o"
    train(TrainConfig(**{**RUN, "max_steps": 6}, stop_after=3, out_dir=str(out)))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # The names that a save and the log's rewrite on --resume once wrote through.
    for name in ("ckpt.pt.tmp", "metrics.jsonl.tmp"):
        (out / name).symlink_to(victim)
    train(TrainConfig(**{**RUN, "max_steps": 6}, resume=True, out_dir=str(out)))
    assert victim.read_text() == "precious"
    assert not (out / "ckpt.pt").is_symlink() and not (out / "metrics.jsonl").is_symlink()
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 6
