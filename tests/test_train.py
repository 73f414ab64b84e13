import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import pause
from data import write_shard
from prepare import prepare
from common import load_checkpoint, lr_at
from train import TrainConfig, parse_args, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model and corpus small enough for a few seconds of CPU.
SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, builtin_docs=200,
             eval_iters=2, lr=3e-3, min_lr=3e-4, warmup_steps=2)
FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
         "--builtin_docs", "200", "--eval_iters", "2", "--lr", "3e-3", "--min_lr", "3e-4", "--warmup_steps", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_flags_parse_into_the_config():
    cfg = parse_args(["--pause_frac", "0.1", "--max_tokens", "200e9", "--compile", "--preset", "1b"])
    assert (cfg.pause_frac, cfg.max_tokens, cfg.compile, cfg.preset, cfg.resume) == (0.1, 200_000_000_000, True, "1b", False)


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_tiny_run_loss_falls_and_checkpoint_loads(tmp_path):
    path = train(TrainConfig(**SMALL, max_steps=40, eval_interval=40, log_interval=5, out_dir=str(tmp_path)))
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"] and rows[-1]["val_loss"] < 0.7 * rows[0]["loss"]
    assert rows[-1]["tokens_seen"] == rows[-1]["real_tokens_seen"] == 40 * 4 * 32
    model, tok, ckpt = load_checkpoint(path)
    assert (tok.name, ckpt["pause_id"], ckpt["pause_frac"], ckpt["step"]) == ("byte", tok.pause_id, 0.0, 40)
    assert model.config.n_embd == 32 and ckpt["config"]["max_steps"] == 40


def test_pause_pretraining_counts_real_tokens(tmp_path):
    train(TrainConfig(**SMALL, pause_frac=0.1, max_steps=10, eval_interval=10, out_dir=str(tmp_path)))
    last = metrics(tmp_path)[-1]
    M, N = pause.num_pretrain_pauses(0.1, 32), 33
    share = 1 - last["real_tokens_seen"] / last["tokens_seen"]
    assert last["tokens_seen"] == 10 * 4 * 32 and abs(share - M / (N + M)) < 0.03
    assert "val_loss" in last and "val_loss_nopause" in last


def test_resumed_run_equals_uninterrupted(tmp_path):
    common = dict(SMALL, pause_frac=0.1, max_steps=8, log_interval=1, eval_interval=3)
    full = str(tmp_path / "full")
    train(TrainConfig(**common, out_dir=full))
    part = str(tmp_path / "part")
    train(TrainConfig(**common, stop_after=3, out_dir=part))  # a job that hit its time limit at step 3
    shutil.copy(os.path.join(part, "ckpt.pt"), tmp_path / "step3.pt")
    train(TrainConfig(**common, stop_after=2, resume=True, out_dir=part))  # runs to step 5 ...
    shutil.copy(tmp_path / "step3.pt", os.path.join(part, "ckpt.pt"))  # ... but was killed before saving
    train(TrainConfig(**common, resume=True, out_dir=part))
    a, b = metrics(full), metrics(part)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["real_tokens_seen"] for r in a] == [r["real_tokens_seen"] for r in b]
    sa, sb = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True)["model"] for d in (full, part))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_process_ddp_matches_one_process_with_accumulation(tmp_path):
    steps = ["--max_steps", "3", "--log_interval", "1", "--eval_interval", "3", "--pause_frac", "0.1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train.py"), *FLAGS, *steps, "--out_dir", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world 2" in res.stdout
    # One process with the same global batch: 2 x 4 sequences, as two accumulated micro-batches;
    # evaluation on 2 x eval_iters batches, the validation windows the two ranks read together.
    train(parse_args(FLAGS + steps + ["--total_batch_tokens", str(2 * 4 * 32), "--eval_iters", "4",
                                      "--out_dir", str(tmp_path / "one")]))
    a, b = metrics(tmp_path / "ddp"), metrics(tmp_path / "one")
    assert [r["tokens_seen"] for r in a] == [r["tokens_seen"] for r in b] == [256, 512, 768]
    assert [r["real_tokens_seen"] for r in a] == [r["real_tokens_seen"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], abs=1e-5)
    sa, sb = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"] for d in ("ddp", "one"))
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


def test_prepared_shards_train(tmp_path):
    src, val = tmp_path / "corpus.txt", tmp_path / "val.txt"
    src.write_text("Think before you speak. 12+34=46\n" * 400)
    val.write_text("Speak after you think. 7+8=15\n" * 100)
    prepare([str(src)], tmp_path / "shards", "byte", val_inputs=[str(val)], workers=1)
    train(TrainConfig(**SMALL, data=str(tmp_path / "shards"), max_steps=3, eval_interval=3, out_dir=str(tmp_path / "o")))
    assert metrics(tmp_path / "o")[-1]["val_loss"] > 0


def test_bad_input_is_named(tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit, match="no checkpoint at .*ckpt.pt"):
        train(TrainConfig(**SMALL, max_steps=2, resume=True, out_dir=out))
    train(TrainConfig(**SMALL, max_steps=2, out_dir=out))
    with pytest.raises(SystemExit, match="n_embd=32 but this run has n_embd=64"):
        train(TrainConfig(**dict(SMALL, n_embd=64), max_steps=4, resume=True, out_dir=out))
    with pytest.raises(SystemExit, match="pause_frac=0.0, this run has pause_frac=0.1"):
        train(TrainConfig(**SMALL, pause_frac=0.1, max_steps=4, resume=True, out_dir=out))
    with pytest.raises(SystemExit, match="nearest valid values are 256 and 384"):
        train(TrainConfig(**SMALL, total_batch_tokens=300, out_dir=out))
    for data in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit, match="python prepare.py prepare"):
            train(TrainConfig(**SMALL, data=str(data), out_dir=out))
    # A prepared directory with a damaged shard, and a checkpoint with another tokenizer.
    src = tmp_path / "c.txt"
    src.write_text("some text\n" * 500)
    prepare([str(src)], tmp_path / "d", "gpt2", val_every=0, workers=1)
    with pytest.raises(SystemExit, match="tokenizer=byte, this run has tokenizer=gpt2"):
        train(TrainConfig(**SMALL, data=str(tmp_path / "d"), resume=True, out_dir=out))
    write_shard(tmp_path / "d" / "train_000001.bin", [1, 2, 3], 50258)
    with open(tmp_path / "d" / "train_000001.bin", "ab") as f:
        f.write(b"xx")
    with pytest.raises(ValueError, match="train_000001.bin: corrupt token shard"):
        train(TrainConfig(**SMALL, data=str(tmp_path / "d"), out_dir=out))
