import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

import pause
from tools.checkpoint import load_checkpoint
from tools.common import field_comments, lr_at, read_jsonl
from data import PretrainLoader, builtin_tokens, get_tokenizer, write_shard
from tools.prepare import prepare
from train import (TrainConfig, check_run_dir, cut_log_after, main, parse_args,
                   set_earlier_run_aside, train)
from tools.common import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model and corpus small enough for a few seconds of CPU.
SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, builtin_docs=200,
             eval_iters=2, lr=3e-3, min_lr=3e-4, warmup_steps=2)
FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
         "--batch_size", "4", "--builtin_docs", "200", "--eval_iters", "2", "--lr", "3e-3",
         "--min_lr", "3e-4", "--warmup_steps", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(**flags):
    """What `python train.py` does with these flags: the checks at the door, then training."""
    cfg = TrainConfig(**flags)
    cfg.check()
    return train(cfg)


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_flags_parse_into_the_config():
    cfg = parse_args(["--pause_frac", "0.1", "--max_tokens", "200e9", "--compile", "--preset",
                      "1b"])
    assert (cfg.pause_frac, cfg.max_tokens, cfg.compile, cfg.preset, cfg.resume) \
        == (0.1, 200_000_000_000, True, "1b", False)


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_tiny_run_loss_falls_and_checkpoint_loads(tmp_path):
    path = run(**SMALL, max_steps=40, eval_interval=40, log_interval=5,
                             out_dir=str(tmp_path))
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"] and rows[-1]["val_loss"] < 0.7 * rows[0]["loss"]
    assert rows[-1]["tokens_seen"] == rows[-1]["real_tokens_seen"] == 40 * 4 * 32
    model, tok, ckpt = load_checkpoint(path)
    assert (tok.name, ckpt["pause_id"], ckpt["pause_frac"], ckpt["step"]) \
        == ("byte", tok.pause_id, 0.0, 40)
    assert model.config.n_embd == 32 and ckpt["config"]["max_steps"] == 40


def test_pause_pretraining_counts_real_tokens(tmp_path):
    run(**SMALL, pause_frac=0.1, max_steps=10, eval_interval=10,
                      out_dir=str(tmp_path))
    last = metrics(tmp_path)[-1]
    M, N = pause.num_pretrain_pauses(0.1, 32), 33
    share = 1 - last["real_tokens_seen"] / last["tokens_seen"]
    assert last["tokens_seen"] == 10 * 4 * 32 and abs(share - M / (N + M)) < 0.03
    assert "val_loss" in last and "val_loss_nopause" in last


def test_resumed_run_equals_uninterrupted(tmp_path):
    common = dict(SMALL, pause_frac=0.1, max_steps=8, log_interval=1, eval_interval=3)
    full = str(tmp_path / "full")
    run(**common, out_dir=full)
    part = str(tmp_path / "part")
    run(**common, stop_after=3, out_dir=part)  # a job that hit its time limit
    shutil.copy(os.path.join(part, "ckpt.pt"), tmp_path / "step3.pt")
    run(**common, stop_after=2, resume=True, out_dir=part)  # runs to step 5 ...
    shutil.copy(tmp_path / "step3.pt", os.path.join(part, "ckpt.pt"))  # ... but died unsaved
    run(**common, resume=True, out_dir=part)
    a, b = metrics(full), metrics(part)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["real_tokens_seen"] for r in a] == [r["real_tokens_seen"] for r in b]
    sa, sb = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True)["model"]
              for d in (full, part))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_process_ddp_matches_one_process_with_accumulation(tmp_path):
    steps = ["--max_steps", "3", "--log_interval", "1", "--eval_interval", "3",
             "--pause_frac", "0.1"]
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
    sa, sb = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"]
              for d in ("ddp", "one"))
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)


def test_prepared_shards_train(tmp_path):
    src, val = tmp_path / "corpus.txt", tmp_path / "val.txt"
    src.write_text("Think before you speak. 12+34=46\n" * 400)
    val.write_text("Speak after you think. 7+8=15\n" * 100)
    prepare([str(src)], tmp_path / "shards", "byte", val_inputs=[str(val)], workers=1)
    run(**SMALL, data=str(tmp_path / "shards"), max_steps=3, eval_interval=3,
                      out_dir=str(tmp_path / "o"))
    assert metrics(tmp_path / "o")[-1]["val_loss"] > 0


def test_bad_input_is_named(tmp_path):
    out, new = str(tmp_path / "o"), str(tmp_path / "new")
    with pytest.raises(UserError, match="no checkpoint at .*ckpt.pt"):
        run(**SMALL, max_steps=2, resume=True, out_dir=out)
    run(**SMALL, max_steps=2, out_dir=out)
    with pytest.raises(UserError, match="n_embd=32 but this run has n_embd=64"):
        run(**dict(SMALL, n_embd=64), max_steps=4, resume=True, out_dir=out)
    with pytest.raises(UserError, match="pause_frac=0.0, this run has pause_frac=0.1"):
        run(**SMALL, pause_frac=0.1, max_steps=4, resume=True, out_dir=out)
    with pytest.raises(UserError, match="nearest valid values are 256 and 384"):
        run(**SMALL, total_batch_tokens=300, out_dir=new)
    with pytest.raises(UserError, match="--data .*missing is not a directory"):
        run(**SMALL, data=str(tmp_path / "missing"), out_dir=new)
    with pytest.raises(UserError, match="holds no prepared data .*python -m tools.prepare"):
        run(**SMALL, data=str(tmp_path), out_dir=new)
    # A prepared directory with a damaged shard, and a checkpoint with another tokenizer.
    src = tmp_path / "c.txt"
    src.write_text("some text\n" * 500)
    prepare([str(src)], tmp_path / "d", "gpt2", val_every=0, workers=1)
    with pytest.raises(UserError, match="tokenizer=byte, this run has tokenizer=gpt2"):
        run(**SMALL, data=str(tmp_path / "d"), resume=True, out_dir=out)
    write_shard(tmp_path / "d" / "train_000000.bin", [1, 2, 3], 50258)
    with open(tmp_path / "d" / "train_000000.bin", "ab") as f:
        f.write(b"xx")
    with pytest.raises(UserError, match="train_000000.bin: corrupt token shard"):
        run(**SMALL, data=str(tmp_path / "d"), out_dir=new)
    assert not os.path.exists(new)  # every refusal came before any work


def test_help_explains_every_flag():
    text = parse_help()
    for f in fields(TrainConfig):
        assert f"--{f.name}" in text
    assert set(field_comments(TrainConfig)) == {f.name for f in fields(TrainConfig)}
    assert "(choices: 130m, 1b, tiny)" in text and "(choices: auto, float32, bfloat16)" in text


def parse_help():
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as buf:
        parse_args(["--help"])
    return " ".join(buf.getvalue().split())


@pytest.mark.parametrize("flags, message", [
    (dict(batch_size=0), "--batch_size must be >= 1, got 0"),
    (dict(log_interval=0), "--log_interval must be >= 1, got 0"),
    (dict(seed=-1), "--seed must be >= 0, got -1"),
    (dict(n_head=3), "--n_head 3 does not divide --n_embd 32"),
    (dict(grad_clip=-1.0), "--grad_clip must be >= 0"),
    (dict(max_steps=0), "--max_steps must be >= 1, got 0"),
    (dict(stop_after=-1), "--stop_after must be >= 0"),
    (dict(max_tokens=-5), "--max_tokens must be >= 0"),
    (dict(eval_iters=0), "--eval_iters must be >= 1, got 0"),
    (dict(eval_iters=10 ** 12), "--eval_iters 1000000000000: the validation split holds"),
    (dict(min_lr=0.01), "--min_lr 0.01 is above --lr 0.003: the decay would climb"),
    (dict(lr=float("nan")), "--lr must be > 0, got nan"),
    (dict(pause_frac=1.0), r"--pause_frac must be in \[0, 1\)"),
    (dict(preset="2b"), "--preset must be one of 130m, 1b, tiny"),
    (dict(dtype="float16"), "--dtype must be auto, float32 or bfloat16"),
    (dict(device="tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    (dict(resume=True, overwrite=True), "give one of them"),
    (dict(resume=True, init_from="gpt2"), "leave out --init_from"),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, flags, message):
    out = tmp_path / "o"
    with pytest.raises(UserError, match=message):
        run(**{**SMALL, "max_steps": 2, **flags}, out_dir=str(out))
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_named(tmp_path):
    with pytest.raises(UserError, match="--device cuda: this machine has no CUDA GPU"):
        run(**SMALL, device="cuda", out_dir=str(tmp_path / "o"))


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("not a directory")
    with pytest.raises(UserError, match="--out_dir .*f is a file, not a directory"):
        run(**SMALL, out_dir=str(tmp_path / "f"))


def test_a_new_run_never_overwrites_a_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "o")
    run(**SMALL, max_steps=2, out_dir=out)
    before = (tmp_path / "o" / "ckpt.pt").read_bytes()
    with pytest.raises(UserError, match="ckpt.pt exists: give --resume .* --overwrite"):
        run(**SMALL, max_steps=3, out_dir=out)
    assert (tmp_path / "o" / "ckpt.pt").read_bytes() == before and len(metrics(out)) == 2
    run(**SMALL, max_steps=3, overwrite=True, out_dir=out)
    assert "removed the earlier run's files" in capsys.readouterr().out
    assert [r["step"] for r in metrics(out)] == [1, 3]  # the new run's log only


def test_data_is_checked_before_the_first_step(tmp_path, capsys):
    src, val = tmp_path / "corpus.txt", tmp_path / "val.txt"
    src.write_text("Think before you speak. 12+34=46\n" * 400)
    val.write_text("Speak after you think.\n" * 2)  # 46 tokens: one window, not a batch of 4
    prepare([str(src)], tmp_path / "small_val", "byte", val_inputs=[str(val)], workers=1)
    out = tmp_path / "o"
    with pytest.raises(UserError, match="val data holds 1 windows"):
        run(**SMALL, data=str(tmp_path / "small_val"), eval_interval=1000,
                          out_dir=str(out))
    assert not (out / "metrics.jsonl").exists() and not (out / "ckpt.pt").exists()
    # The built-in corpus grows with a flag, not by preparing data.
    with pytest.raises(UserError, match="train data holds .*; raise --builtin_docs or use"):
        run(**{**SMALL, "builtin_docs": 1, "batch_size": 64}, out_dir=str(out))
    # A validation shard that meta.json lists but that is gone: named at the start.
    prepare([str(src)], tmp_path / "lost_val", "byte", val_inputs=[str(val)], workers=1)
    (tmp_path / "lost_val" / "val_000000.bin").unlink()
    with pytest.raises(UserError, match="val_000000.bin is missing"):
        run(**SMALL, data=str(tmp_path / "lost_val"), out_dir=str(out))
    assert not out.exists()
    # Without a validation split: training runs, says so once, and logs no val_loss.
    prepare([str(src)], tmp_path / "no_val", "byte", val_every=0, workers=1)
    run(**SMALL, data=str(tmp_path / "no_val"), max_steps=4, eval_interval=2,
                      out_dir=str(tmp_path / "o2"))
    assert capsys.readouterr().out.count("has no validation split") == 1
    rows = metrics(tmp_path / "o2")
    assert rows and not any("val_loss" in r for r in rows)
    assert torch.load(tmp_path / "o2" / "ckpt.pt", weights_only=True)["step"] == 4


def test_resume_with_other_settings_says_so_and_uses_them(tmp_path, capsys):
    out = str(tmp_path / "o")
    run(**SMALL, max_steps=4, stop_after=2, log_interval=1, out_dir=out)
    capsys.readouterr()
    run(**{**SMALL, "batch_size": 2, "lr": 2e-3}, max_steps=4, log_interval=1, resume=True,
        out_dir=out)
    said = capsys.readouterr().out
    assert "note: resuming with batch_size 2 (was 4), lr 0.002 (was 0.003)" in said
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # The new peak rate takes over the schedule: step 3 runs at lr_at(2, ...) of 2e-3.
    assert rows[2]["lr"] == pytest.approx(lr_at(2, 4, 2e-3, 2, 3e-4))
    assert rows[2]["tokens_seen"] - rows[1]["tokens_seen"] == 2 * 32


def test_resume_with_other_data_or_context_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "o")
    main(FLAGS + ["--max_steps", "4", "--stop_after", "2", "--out_dir", out])
    before = (tmp_path / "o" / "ckpt.pt").read_bytes()
    for flags, named in ((["--builtin_docs", "300"], "--builtin_docs"),
                         (["--block_size", "16"], "--block_size")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(FLAGS + flags + ["--max_steps", "4", "--resume", "--out_dir", out])
        assert str(e.value).startswith("train.py: error: ") and named in str(e.value)
        assert "\n" not in str(e.value) and "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "o" / "ckpt.pt").read_bytes() == before
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_eval_interval_0_evaluates_once_at_the_end(tmp_path):
    # --help: "0 = one at the end", of the schedule: a run cut short by --stop_after saves a
    # checkpoint without evaluating, and its resumed run evaluates at the end.
    out = str(tmp_path / "o")
    run(**SMALL, max_steps=4, stop_after=2, eval_interval=0, log_interval=1, out_dir=out)
    assert [("val_loss" in r) for r in metrics(out)] == [False, False]
    run(**SMALL, max_steps=4, eval_interval=0, log_interval=1, resume=True, out_dir=out)
    assert [("val_loss" in r) for r in metrics(out)] == [False, False, False, True]
    assert torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)["step"] == 4


def test_a_weight_decay_that_flips_the_weights_is_named(tmp_path):
    with pytest.raises(UserError, match=r"loss nan.*The cause is --weight_decay 1e\+30"):
        run(**SMALL, weight_decay=1e30, max_steps=6, log_interval=1, out_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o" / "ckpt.pt").exists()


# A train.py that runs until it is killed, with a line in its log after each step and a
# checkpoint every second step.
ENDLESS = ["--max_steps", "100000", "--log_interval", "1", "--eval_interval", "2"]


def test_two_runs_in_one_out_dir(tmp_path):
    out = tmp_path / "o"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *FLAGS, *ENDLESS,
                              "--out_dir", str(out)], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "ckpt.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        # A second new run, and a --resume of the running one: both refused, naming the
        # holder, and neither touches the first run's files.
        for flags in (["--overwrite"], ["--resume"]):
            with pytest.raises(SystemExit, match=f"in use by process {first.pid} "):
                main(FLAGS + ["--max_steps", "4", "--out_dir", str(out), *flags])
    finally:
        first.kill()
        first.wait()
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, len(steps) + 1))  # one run's log, not two interleaved
    # The killed run left a stale lock, which its --resume takes over.
    run(**SMALL, max_steps=steps[-1] + 1, resume=True, out_dir=str(out))
    assert not (out / ".lock").exists()


def test_resume_refuses_a_finetuned_or_foreign_checkpoint(tmp_path):
    out = tmp_path / "o"
    run(**SMALL, max_steps=2, out_dir=str(out))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    finetuned = {k: ckpt[k] for k in ("model", "model_config", "tokenizer", "pause_id")}
    torch.save({**finetuned, "finetune_config": {"task": "add"}}, out / "ckpt.pt")
    with pytest.raises(UserError, match="ckpt.pt is a finetuned checkpoint .* but a pretraining"):
        run(**SMALL, max_steps=4, resume=True, out_dir=str(out))
    torch.save(ckpt["model"], out / "ckpt.pt")  # a bare state_dict, as other projects save
    with pytest.raises(UserError, match="not a checkpoint of this project: found a dict with "
                                         "the keys blocks.0"):
        run(**SMALL, max_steps=4, resume=True, out_dir=str(out))
    (out / "ckpt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a checkpoint this project can read"):
        run(**SMALL, max_steps=4, resume=True, out_dir=str(out))


# -----------------------------------------------------------------------------------------------
# Continued pretraining from GPT-2 weights (--init_from), on a tiny checkpoint in the Hugging Face
# layout written here: no download.

def tiny_hf_dir(path, n_layer=1, n_head=2, n_embd=32, n_positions=64):
    """config.json + pytorch_model.bin as the hub stores GPT-2: Conv1D weights (in, out), no
    'transformer.' prefix, the old attention-mask buffers, 50257 token rows."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: 0.02 * torch.randn(*shape, generator=g)  # noqa: E731
    sd = {"wte.weight": rand(50257, n_embd), "wpe.weight": rand(n_positions, n_embd),
          "ln_f.weight": 1 + rand(n_embd), "ln_f.bias": rand(n_embd)}
    for i in range(n_layer):
        h = f"h.{i}."
        sd.update({h + "ln_1.weight": 1 + rand(n_embd), h + "ln_1.bias": rand(n_embd),
                   h + "attn.c_attn.weight": rand(n_embd, 3 * n_embd),
                   h + "attn.c_attn.bias": rand(3 * n_embd),
                   h + "attn.c_proj.weight": rand(n_embd, n_embd),
                   h + "attn.c_proj.bias": rand(n_embd),
                   h + "attn.bias": torch.ones(1, 1, n_positions, n_positions).tril(),
                   h + "ln_2.weight": 1 + rand(n_embd), h + "ln_2.bias": rand(n_embd),
                   h + "mlp.c_fc.weight": rand(n_embd, 4 * n_embd),
                   h + "mlp.c_fc.bias": rand(4 * n_embd),
                   h + "mlp.c_proj.weight": rand(4 * n_embd, n_embd),
                   h + "mlp.c_proj.bias": rand(n_embd)})
    path.mkdir()
    torch.save(sd, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
        "n_positions": n_positions, "vocab_size": 50257, "activation_function": "gelu_new"}))
    return sd


GPT2_RUN = dict(batch_size=4, builtin_docs=100, eval_iters=2, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                block_size=32, log_interval=1)


def test_init_from_a_gpt2_directory_continues_its_weights(tmp_path):
    sd = tiny_hf_dir(tmp_path / "hf")
    out = tmp_path / "o"
    run(**GPT2_RUN, init_from=str(tmp_path / "hf"), pause_frac=0.1, max_steps=4,
                      eval_interval=2, out_dir=str(out))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["tokenizer"] == "gpt2" and ckpt["pause_id"] == 50257
    shape = ("n_layer", "n_embd", "block_size", "bias", "gelu")
    assert {k: ckpt["model_config"][k] for k in shape} \
        == dict(n_layer=1, n_embd=32, block_size=64, bias=True, gelu="tanh")
    # The first logged loss is the loss of the GPT-2 weights on the first batch: computed here
    # with a plain GPT-2 forward pass written from the file's tensors.
    tok = get_tokenizer("gpt2")
    loader = PretrainLoader(builtin_tokens(100, seed=0, tokenizer_name="gpt2"), 4, 32, 0.1,
                            tok.pause_id, seed=1337)
    x, y = loader.next_batch()
    assert metrics(out)[0]["loss"] == pytest.approx(gpt2_loss(sd, x, y), abs=1e-5)
    # A run that began from GPT-2 resumes with --resume alone: the shape comes from its checkpoint.
    run(**GPT2_RUN, pause_frac=0.1, max_steps=6, resume=True, out_dir=str(out))
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))


def gpt2_loss(sd, x, y):
    """GPT-2's forward pass on the hub's tensors (Conv1D: x @ W + b; tanh GELU), independent of
    model.py. The rows after GPT-2's 50257 (the pause, then padding to 50304) are the mean row."""
    n_embd, n_head = sd["wte.weight"].size(1), 2
    wte = torch.cat([sd["wte.weight"], sd["wte.weight"].mean(0, keepdim=True).expand(47, -1)])
    h = wte[x] + sd["wpe.weight"][: x.size(1)]
    ln = lambda t, p: F.layer_norm(t, (n_embd,), sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    q, k, v = (ln(h, "h.0.ln_1") @ sd["h.0.attn.c_attn.weight"] + sd["h.0.attn.c_attn.bias"]) \
        .split(n_embd, dim=2)
    heads = lambda t: t.view(*x.shape, n_head, -1).transpose(1, 2)  # noqa: E731
    att = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    h = h + att.transpose(1, 2).reshape(h.shape) @ sd["h.0.attn.c_proj.weight"] \
        + sd["h.0.attn.c_proj.bias"]
    m = F.gelu(ln(h, "h.0.ln_2") @ sd["h.0.mlp.c_fc.weight"] + sd["h.0.mlp.c_fc.bias"],
               approximate="tanh")
    h = h + m @ sd["h.0.mlp.c_proj.weight"] + sd["h.0.mlp.c_proj.bias"]
    logits = ln(h, "ln_f") @ wte.t()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                           ignore_index=-1).item()


def test_init_from_refuses_what_does_not_fit(tmp_path):
    tiny_hf_dir(tmp_path / "hf")
    flags = dict(GPT2_RUN, init_from=str(tmp_path / "hf"), out_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match=r"has n_layer=1 but this run has n_layer=3 \(--n_layer"):
        run(**{**flags, "n_layer": 3})
    with pytest.raises(UserError, match="has n_layer=1 but this run has n_layer=12 "
                                         "\\(--preset 130m\\)"):
        run(**{**flags, "preset": "130m"})
    with pytest.raises(UserError, match="has block_size=64 but this run has block_size=128"):
        run(**{**flags, "block_size": 128})
    src = tmp_path / "c.txt"
    src.write_text("some text\n" * 500)
    prepare([str(src)], tmp_path / "bytes", "byte", val_every=0, workers=1)
    with pytest.raises(UserError, match="needs data tokenized for GPT-2, but .* holds byte"):
        run(**{**flags, "data": str(tmp_path / "bytes")})
    with pytest.raises(UserError, match="unknown GPT-2 checkpoint|neither a GPT-2 checkpoint"):
        run(**{**flags, "init_from": "gpt3"})
    assert not (tmp_path / "o").exists()


def test_check_run_dir(tmp_path):
    def check(**flags):
        check_run_dir(TrainConfig(**{"out_dir": str(tmp_path), **flags}))
    with pytest.raises(UserError, match="--resume: no checkpoint at"):
        check(resume=True)
    check()
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(UserError, match="ckpt.pt exists: give --resume .* --overwrite"):
        check()
    with pytest.raises(UserError, match="give one of them"):
        check(resume=True, overwrite=True)
    check(resume=True)
    check(overwrite=True)


def test_cut_log_after(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    cut_log_after(str(log), 2)  # resuming from a checkpoint of step 2
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]


def run_files(out_dir):
    return {name: (out_dir / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl")}


def test_a_failed_overwrite_leaves_the_earlier_run_whole(tmp_path, capsys):
    out = tmp_path / "o"
    run(**SMALL, max_steps=2, out_dir=str(out))
    earlier = run_files(out)
    # diverges at its first step: stopped before its first checkpoint
    with pytest.raises(UserError, match="stopped without saving"):
        run(**{**SMALL, "lr": 1e30, "min_lr": 0.0}, max_steps=3, overwrite=True,
            out_dir=str(out))
    assert run_files(out) == earlier and sorted(os.listdir(out)) == sorted(earlier)
    assert "holds the earlier run again" in capsys.readouterr().out


def test_a_killed_overwrite_is_undone_or_finished_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "o"
    run(**SMALL, max_steps=2, out_dir=str(out))
    earlier = run_files(out)
    # killed after setting the earlier run aside, before its first checkpoint
    set_earlier_run_aside(str(out))
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(UserError, match="ckpt.pt exists: give --resume"):
        run(**SMALL, max_steps=3, out_dir=str(out))  # put back, then refused as usual
    assert run_files(out) == earlier and sorted(os.listdir(out)) == sorted(earlier)
    # killed after its first checkpoint, before the earlier files were deleted
    set_earlier_run_aside(str(out))
    (out / "ckpt.pt").write_bytes(earlier["ckpt.pt"])
    run(**SMALL, max_steps=2, resume=True, out_dir=str(out))
    assert not (out / ".earlier").exists()
    # an --overwrite that finishes replaces the earlier run only then
    run(**SMALL, max_steps=3, overwrite=True, out_dir=str(out))
    assert [r["step"] for r in metrics(str(out))] == [1, 3] and not (out / ".earlier").exists()
    assert "replaced by this run's" in capsys.readouterr().out
