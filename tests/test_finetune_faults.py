"""finetune.py as a careless user meets it. A run directory has one owner and is replaced only by
a complete run; no input is ever deleted; and a table-driven campaign gives every flag nonsense
(0, negative, inf, nan, 1e400, empty, a file, a directory, a read-only directory, a dangling
symlink): each case ends in a one-line message that names the flag or file, a non-zero exit and
nothing written, or in a correct result. One-layer models, one step: fractions of a second each."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest
import torch

import finetune
from data import get_tokenizer
from finetune import FinetuneConfig
from model import GPT, GPTConfig
from tools.checkpoint import save_checkpoint
from tools.common import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = get_tokenizer("byte")
# root writes into a read-only directory anyway: there, a run in one is a correct result
ROOT_USER = os.geteuid() == 0

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def one_layer_ckpt(path, pause_frac=0.0):
    """A checkpoint shaped like train.py's, of a one-layer model."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=TOK.vocab_size, n_layer=1, n_head=2,
                          n_embd=16))
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                     "step": 0, "config": {}, "optimizer": {}, "loader": {}, "tokenizer": "byte",
                     "pause_id": TOK.pause_id, "pause_frac": pause_frac}, str(path))
    return str(path)


def tiny_cfg(ckpt, out_dir, **kw):
    settings = dict(ckpt=ckpt, task="world:add", n_train=8, n_eval=2, max_steps=2,
                    batch_size=4, out_dir=str(out_dir))
    return FinetuneConfig(**{**settings, **kw})


def snapshot(folder):
    """{name: bytes} of every file under folder (hidden ones too)."""
    out = {}
    for here, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(here, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


# ---------------------------------------------------------------------------------------------
# No input is deleted: --overwrite without --save keeps the --ckpt it was given.

def test_overwrite_without_save_keeps_the_input_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = one_layer_ckpt(out / "ckpt.pt")  # train.py's out_dir, finetuned into
    before = open(ckpt, "rb").read()
    argv = ["--ckpt", ckpt, "--task", "world:add", "--n_train", "8", "--n_eval", "2",
            "--max_steps", "1", "--batch_size", "4", "--out_dir", str(out)]
    finetune.main(argv)  # the input checkpoint is no earlier run's file: no --overwrite
    finetune.main([*argv, "--seed", "1", "--overwrite"])
    assert open(ckpt, "rb").read() == before
    assert "kept" in capsys.readouterr().out
    # evaluation-only, in place, from a relative spelling of the same file
    monkeypatch.chdir(tmp_path)
    finetune.main([*argv, "--ckpt", "run/../run/ckpt.pt", "--max_steps", "0", "--overwrite"])
    assert open(ckpt, "rb").read() == before
    cfg = tiny_cfg(ckpt, out)
    # --save would replace the input with the finetuned model: refused at the door
    with pytest.raises(UserError, match="--save would replace --ckpt"):
        replace(cfg, save=True, overwrite=True).check()


# ---------------------------------------------------------------------------------------------
# A run directory has one owner, and holds one run.

def test_a_run_directory_held_by_a_live_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                               "since": "now", "command": "finetune.py"}))
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            finetune.finetune(tiny_cfg(one_layer_ckpt(tmp_path / "c.pt"), out), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(out) == [".lock"]  # nothing written beside the other run's lock


def test_the_lock_is_held_while_the_run_writes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []
    lr_at = finetune.lr_at
    monkeypatch.setattr(finetune, "lr_at", lambda *a: seen.append(
        os.path.exists(out / ".lock")) or lr_at(*a))
    finetune.finetune(tiny_cfg(one_layer_ckpt(tmp_path / "c.pt"), out), progress=False)
    assert seen == [True, True] and not os.path.exists(out / ".lock")


def test_a_failed_overwrite_leaves_the_earlier_run_whole(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_cfg(one_layer_ckpt(tmp_path / "c.pt"), out, save=True)
    finetune.finetune(cfg, progress=False)
    earlier = snapshot(out)
    assert set(earlier) == {"metrics.jsonl", "predictions.jsonl", "results.json", "ckpt.pt"}
    # a diverged run: stopped by the NaN check after a few log lines
    bad = replace(cfg, lr=1e30, warmup_steps=0, log_interval=1, overwrite=True)
    with pytest.raises(UserError, match="not finite"):
        finetune.finetune(bad, progress=False)

    def unfinished_left_aside(files):
        return {k: v for k, v in files.items() if not k.startswith(".unfinished")}
    assert unfinished_left_aside(snapshot(out)) == earlier
    # a run that dies while it evaluates
    def dies(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(finetune, "generate_answers", dies)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(replace(cfg, seed=1, overwrite=True), progress=False)
    assert unfinished_left_aside(snapshot(out)) == earlier


def test_a_killed_overwrite_leaves_the_earlier_run_whole(tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = one_layer_ckpt(tmp_path / "c.pt")
    finetune.finetune(tiny_cfg(ckpt, out), progress=False)
    earlier = snapshot(out)
    args = ["--ckpt", ckpt, "--task", "world:add", "--n_train", "8", "--n_eval", "2",
            "--max_steps", "100000", "--batch_size", "4", "--log_interval", "1", "--out_dir",
            str(out), "--overwrite", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "finetune.py"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / ".unfinished" / "metrics.jsonl"

    def started():  # the new run's first log line is written (wherever it writes it)
        grown = log.exists() and log.stat().st_size
        return grown or open(out / "metrics.jsonl", "rb").read() != earlier["metrics.jsonl"]
    deadline = time.time() + 120
    while not started() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-training: no handler runs
    proc.wait()
    now = snapshot(out)
    assert {k: v for k, v in now.items()
            if not k.startswith(".unfinished") and k != ".lock"} == earlier
    assert log.exists()
    # the next run takes over the dead run's lock and clears what it left, saying so
    finetune.finetune(tiny_cfg(ckpt, out, overwrite=True), progress=False)
    printed = capsys.readouterr().out
    assert "has ended; taken over" in printed
    assert f"removed {out / finetune.UNFINISHED}" in printed
    assert sorted(os.listdir(out)) == ["metrics.jsonl", "predictions.jsonl", "results.json"]


def test_a_fresh_run_refused_after_the_door_writes_nothing(tmp_path):
    # --num_pauses_eval 60 leaves no room in a context of 64: found once the model is loaded
    cfg = tiny_cfg(one_layer_ckpt(tmp_path / "c.pt"), tmp_path / "run", num_pauses_eval=60)
    with pytest.raises(UserError, match="--num_pauses_eval"):
        finetune.finetune(cfg, progress=False)
    assert not os.path.exists(tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# The campaign: every flag given nonsense, through main(), as on the command line.

NONSENSE = ["0", "-1", "inf", "nan", "1e400", ""]
HUGE = "9e18"  # fits in 64 bits
# flag: (values that give a correct result, values refused after the parser's own checks)
NUMBERS = {
    "batch_size": ({HUGE}, set()),
    "eval_batch_size": ({HUGE}, set()),
    "log_interval": ({HUGE}, set()),
    "seed": ({"0", HUGE}, set()),
    "data_seed": ({"0", HUGE}, set()),
    "max_steps": ({"0"}, set()),
    "warmup_steps": ({"0", HUGE}, set()),
    "num_pauses": ({"0"}, {HUGE}),
    "num_pauses_eval": ({"0", "-1"}, {HUGE}),
    "max_new_tokens": ({"0"}, {HUGE}),
    "n_train": ({"-1"}, {HUGE}),
    "n_eval": ({"-1"}, {HUGE}),
    "lr": (set(), set()),
    "min_lr": ({"0"}, set()),
    "weight_decay": ({"0"}, set()),
    "grad_clip": ({"0"}, set()),
}
NUMBER_CASES = [(flag, value, value in ok) for flag, (ok, more) in NUMBERS.items()
                for value in NONSENSE + sorted(more | ok - set(NONSENSE))]
PLACES = ["", "file", "dir", "read-only", "dangling"]
# flag: the places that give a correct result (a read-only directory only for root)
PATHS = {"ckpt": set(), "init_from": set(), "data": set(), "eval_data": {""},
         "out_dir": {"dir"} | ({"read-only"} if ROOT_USER else set())}
PATH_CASES = [(flag, place, place in ok) for flag, ok in PATHS.items() for place in PLACES]
WORDS = [("filler", "", True), ("filler", ".", True), ("filler", "ab", False),
         ("device", "", False), ("device", "cpu", True), ("device", "tpu", False),
         ("task", "", False), ("where", "", False), ("dtype", "", False)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A one-layer checkpoint, and a SQuAD directory (train and validation splits)."""
    root = tmp_path_factory.mktemp("campaign")
    squad = root / "data" / "squad"
    squad.mkdir(parents=True)
    for split in ("train", "validation"):
        rows = [{"title": "T", "context": f"Fact {i}.", "question": f"{split} {i}?",
                 "answers": {"text": ["yes"], "answer_start": [0]}} for i in range(4)]
        (squad / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"ckpt": one_layer_ckpt(root / "c.pt"), "data": str(root / "data")}


def place(tmp_path, kind):
    """A path of the kind: empty, a junk file, an empty directory, a read-only directory, or a
    symlink to nothing."""
    path = tmp_path / f"the_{kind}"
    if kind == "":
        return ""
    if kind == "file":
        path.write_text("junk")
    if kind in ("dir", "read-only"):
        path.mkdir()
    if kind == "read-only":
        path.chmod(0o555)
    if kind == "dangling":
        os.symlink(tmp_path / "nothing_here", path)
    return str(path)


def campaign_run(files, tmp_path, capsys, flag, value, ok):
    """finetune.main with one flag set to value (after a base command that works); checks
    a correct result, or a refusal: one line naming the flag or the file, non-zero exit, and
    nothing written."""
    out = str(tmp_path / "out")
    base = {"ckpt": files["ckpt"], "task": "world:add", "n_train": "8", "n_eval": "2",
            "max_steps": "1", "batch_size": "4", "eval_batch_size": "64", "out_dir": out}
    if flag in ("data", "eval_data"):
        base.update(task="squad", data=files["data"], n_train="-1", n_eval="-1")
    if flag == "init_from":
        base["ckpt"] = ""
    base[flag] = value
    argv = [a for k, v in base.items() for a in (f"--{k}", v)]
    target = value if flag == "out_dir" else out
    before = snapshot(target) if os.path.isdir(target) else os.path.lexists(target)
    if ok:
        finetune.main(argv)
        results = json.load(open(os.path.join(target, "results.json")))
        lines = open(os.path.join(target, "predictions.jsonl")).read().splitlines()
        assert len(lines) == results["num_examples"] > 0
        recorded = {"seed": "seed", "data_seed": "data_seed", "max_steps": "steps",
                    "num_pauses": "num_pauses", "filler": "filler"}
        if flag in recorded and flag != "max_steps":
            assert str(results[recorded[flag]]) == str(int(float(value)) if value not in
                                                       ("", ".") else value)
        return
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    code = e.value.code
    err = capsys.readouterr().err
    message = code if isinstance(code, str) else err.strip().splitlines()[-1]
    assert code not in (0, None)
    assert "error: " in message and "\n" not in message and "Traceback" not in err
    assert f"--{flag}" in message or (value and value in message), message
    after = snapshot(target) if os.path.isdir(target) else os.path.lexists(target)
    assert after == before  # nothing written


@pytest.mark.parametrize("flag,value,ok", NUMBER_CASES)
def test_campaign_numbers(files, tmp_path, capsys, flag, value, ok):
    campaign_run(files, tmp_path, capsys, flag, value, ok)


@pytest.mark.parametrize("flag,kind,ok", PATH_CASES)
def test_campaign_paths(files, tmp_path, capsys, flag, kind, ok):
    campaign_run(files, tmp_path, capsys, flag, place(tmp_path, kind), ok)


@pytest.mark.parametrize("flag,value,ok", WORDS)
def test_campaign_words(files, tmp_path, capsys, flag, value, ok):
    campaign_run(files, tmp_path, capsys, flag, value, ok)


def test_a_read_only_out_dir_is_refused_when_it_cannot_be_written(files, tmp_path, capsys,
                                                                  monkeypatch):
    # what a read-only file system (or another user's directory) answers
    monkeypatch.setattr(finetune.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as e:
        finetune.main(["--ckpt", files["ckpt"], "--task", "world:add",
                       "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--out_dir" in err and "is not writable" in err, err
    assert not os.path.exists(tmp_path / "out")
