"""finetune.py against plain twins: rows with pauses and left-cut prompts, batched choice scoring
against a per-choice loop, KV-cached pause-inference against plain greedy decoding, two-process DDP
against one process; a tiny finetuning run, the four configurations, and bad input."""
import json
import os
import socket
from dataclasses import asdict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import finetune
from data import get_tokenizer
from tasks import BUILTIN, TASKS
from finetune import Context, FinetuneConfig, evaluate, training_rows
from model import GPT, GPTConfig
from common import save_checkpoint

TOK = get_tokenizer("byte")
P = TOK.pause_id


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(seed=0, block_size=64, vocab_size=TOK.vocab_size):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32))


def save_tiny_ckpt(path, pause_frac=0.0, vocab_size=TOK.vocab_size, seed=0, block_size=64):
    model = tiny_model(seed, block_size, vocab_size)
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config), "step": 0, "config": {},
                     "tokenizer": "byte", "pause_id": P, "pause_frac": pause_frac}, str(path))
    return str(path)


def ctx_for(model):
    return Context(TOK, model.config.block_size, model.config.vocab_size)


# ----------------------------------------------------------------------------------------------
# Rows: prompt + pauses + answer, the prompt cut from the left when it does not fit.

@pytest.mark.parametrize("where", ["append", "prepend"])
def test_training_rows_cut_long_prompts_from_the_left(where):
    ctx = Context(TOK, 64, TOK.vocab_size)
    long_prompt = "Zürich é " * 40 + "What is 4+38?"   # multi-byte characters; 2 bytes each in the byte tokenizer
    examples = [{"prompt": long_prompt, "target": " 42"}, {"prompt": "4+38=", "target": "42"}]
    rows, cut = training_rows(examples, BUILTIN["world:add"], ctx, 10, where)
    assert cut == 1
    for ex, (x, y) in zip(examples, rows):
        prompt, target = list(ex["prompt"].encode()), list(ex["target"].encode()) + [10]  # the answer ends in "\n"
        room = 64 - 10 - len(target) + 1
        kept = prompt[-room:]
        pauses = [P] * 10
        expect_x = (kept + pauses if where == "append" else pauses + kept) + target[:-1]
        assert x.tolist() == expect_x and len(x) <= 64
        assert y.tolist() == [-1] * (len(expect_x) - len(target)) + target   # loss on the whole answer only
    with pytest.raises(ValueError, match="no room for the prompt"):
        training_rows([{"prompt": "x", "target": "1" * 60}], BUILTIN["world:add"], ctx, 10, "append")


# ----------------------------------------------------------------------------------------------
# Evaluation against plain twins.

def plain_log_probs(model, seq):
    logits = model(torch.tensor([seq]))[0][0, :, :model.config.vocab_size].float()
    logits[:, P] = float("-inf")
    return F.log_softmax(logits, -1)


@pytest.mark.parametrize("num_pauses,where,filler", [(0, "append", None), (3, "append", None),
                                                     (3, "prepend", None), (4, "append", ord("."))])
def test_choice_scoring_equals_a_plain_per_choice_loop(num_pauses, where, filler):
    model = tiny_model(1).eval()
    ctx = ctx_for(model)
    examples = [{"prompt": "Question: which is heavier?\nAnswer:", "choices": [" iron", " a feather", " x"], "label": 0},
                {"prompt": "Pick one:", "choices": [" yes", " no"], "label": 1},
                {"prompt": "A long context. " * 10 + "End:", "choices": [" Ünïcödé", " ascii only"], "label": 0}]
    value, records, cut = evaluate(model, examples, TASKS["piqa"], ctx, num_pauses, where, filler, batch_size=3)
    assert cut == 1  # the third prompt (160 bytes) is cut to fit the context of 64
    plain_pred = []
    for ex in examples:
        choices = [list(c.encode()) for c in ex["choices"]]
        room = 64 - num_pauses - max(map(len, choices)) + 1
        prompt = list(ex["prompt"].encode())[-room:]
        delay = [filler if filler is not None else P] * num_pauses
        prefix = prompt + delay if where == "append" else delay + prompt
        sums = []
        for c in choices:
            logp = plain_log_probs(model, prefix + c[:-1])
            sums.append(sum(logp[len(prefix) - 1 + k, t].item() for k, t in enumerate(c)))
        per_char = [s / len(text) for s, text in zip(sums, ex["choices"])]  # acc_norm: per character of the text
        plain_pred.append(max(range(len(per_char)), key=per_char.__getitem__))
        rows = [finetune.pause.finetune_example(finetune.delay_tokens(prompt, num_pauses, P, filler, where)[0], c,
                                                0 if filler is not None else num_pauses, P, where) for c in choices]
        batched = finetune.score_choices(model, rows, ctx, batch_size=2)
        assert batched == pytest.approx(sums, abs=1e-4)
    assert [r["prediction"] for r in records] == plain_pred
    assert value == pytest.approx(100 * sum(p == ex["label"] for p, ex in zip(plain_pred, examples)) / 3)


@pytest.fixture(scope="module")
def digit_model():
    # A model trained for a few steps to emit digits and newlines, so that stopping is exercised.
    model = tiny_model(2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    text = torch.tensor([list(b"12+3=15\n7+1=8\n")] * 4)
    for _ in range(30):
        _, loss = model(text[:, :-1], text[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("num_pauses,where,filler", [(0, "append", None), (5, "append", None),
                                                     (5, "prepend", None), (5, "append", ord("."))])
def test_pause_inference_equals_plain_greedy_decoding(digit_model, num_pauses, where, filler):
    model = digit_model
    ctx = ctx_for(model)
    examples = [{"prompt": p, "answers": ["15"], "target": "15"} for p in ["12+3=", "7+1=", "Ü" * 40 + "9+9="]]
    max_new = 6
    _, records, cut = evaluate(model, examples, BUILTIN["world:add"], ctx, num_pauses, where, filler, max_new)
    assert cut == 1  # the third prompt: 84 bytes + pauses + 6 new tokens > 64
    for ex, rec in zip(examples, records):
        prompt = list(ex["prompt"].encode())[-(64 - num_pauses - max_new):]
        delay = [filler if filler is not None else P] * num_pauses
        seq = prompt + delay if where == "append" else delay + prompt
        new = []
        for _ in range(max_new):
            nxt = int(plain_log_probs(model, seq + new)[-1].argmax())
            if nxt in (10, TOK.eot_id):
                break
            new.append(nxt)
        assert P not in new
        # the gold answer's teacher-forced loss, with room kept for the answer instead of new tokens
        target = list(b"15\n")
        prompt = list(ex["prompt"].encode())[-(64 - num_pauses - len(target) + 1):]
        seq = prompt + delay if where == "append" else delay + prompt
        logp = plain_log_probs(model, seq + target[:-1])
        nll = -sum(logp[len(seq) - 1 + k, t].item() for k, t in enumerate(target))
        assert rec["answer_nll"] == pytest.approx(nll, abs=1e-4) and rec["answer_tokens"] == 3
        assert rec["prediction"] == TOK.decode(new)
        assert rec["score"] == float(TOK.decode(new).strip() == "15")
    assert any(r["prediction"] for r in records)


# ----------------------------------------------------------------------------------------------
# Finetuning runs.

def test_finetune_loss_falls_and_results_are_written(tmp_path):
    ckpt = save_tiny_ckpt(tmp_path / "ckpt.pt")
    cfg = FinetuneConfig(ckpt=ckpt, task="world:add", n_train=256, n_eval=20, num_pauses=3, max_steps=60,
                         batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5, log_interval=10,
                         out_dir=str(tmp_path / "ft"), save=True)
    _, _, results = finetune.finetune(cfg, progress=False)
    log = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[0] > 5.0 and losses[-1] < losses[0] - 2.0  # from ln(258) = 5.55 towards the digits' entropy
    written = json.load(open(tmp_path / "ft" / "results.json"))
    assert written == results and log[-1]["eval"] == results
    for key, value in {"task": "world:add", "config": "StdPT_PauseFT", "num_pauses": 3, "num_pauses_eval": 3,
                       "metric": "exact", "num_examples": 20, "seed": 0, "truncated_train": 0}.items():
        assert results[key] == value
    assert 0.0 <= results["value"] <= 100.0
    assert len(open(tmp_path / "ft" / "predictions.jsonl").readlines()) == 20
    # the saved model reloads
    model, tok, saved = finetune.load_pretrained(str(tmp_path / "ft" / "ckpt.pt"), "cpu")
    assert saved["finetune_config"]["num_pauses"] == 3


def test_finetune_counts_and_reports_cut_prompts(tmp_path, capsys):
    rows = [{"id": str(i), "title": "T", "context": f"Fact {i}: " + "ünïcode context words " * 30,
             "question": f"Question {i}?", "answers": {"text": ["yes", "yes", "Yes."], "answer_start": [0, 0, 0]}}
            for i in range(6)]
    for split in ("train", "validation"):
        os.makedirs(tmp_path / "data" / "squad", exist_ok=True)
        with open(tmp_path / "data" / "squad" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt", pause_frac=0.1), task="squad",
                         data=str(tmp_path / "data"), num_pauses=4, max_steps=2, batch_size=2,
                         out_dir=str(tmp_path / "ft"))
    _, _, results = finetune.finetune(cfg, progress=False)
    assert results["config"] == "PausePT_PauseFT" and results["metric"] == "em"
    assert results["truncated_train"] == 6 and results["truncated_eval"] == 6 and results["num_examples"] == 6
    assert "em" in results and "f1" in results
    out = capsys.readouterr().out
    assert "6 prompts cut from the left" in out and "6 of 6 evaluation prompts were cut" in out


def test_checkpoint_without_a_pause_token_is_refused(tmp_path):
    ckpt = save_tiny_ckpt(tmp_path / "nopause.pt", vocab_size=257)  # bytes + <|endoftext|>, no <|pause|>
    with pytest.raises(ValueError, match="has no pause token"):
        finetune.load_pretrained(ckpt, "cpu")


def test_compare_runs_the_four_configurations_and_the_ablations(tmp_path, capsys):
    cfg = FinetuneConfig(compare=True, std_ckpt=save_tiny_ckpt(tmp_path / "std.pt"),
                         pause_ckpt=save_tiny_ckpt(tmp_path / "pause.pt", pause_frac=0.1, seed=1),
                         task="world:add", n_train=64, n_eval=6, num_pauses=2, max_steps=3, batch_size=8,
                         seeds=2, minf_sweep=True, filler_baseline=True, where="prepend", out_dir=str(tmp_path / "cmp"))
    result = finetune.compare(cfg)
    got = {(r["config"], r["num_pauses"], r["num_pauses_eval"]) for r in result["rows"]}
    sweep = {(c, 2, m) for c in ("StdPT_PauseFT", "PausePT_PauseFT") for m in (0, 1, 2, 3, 4)}
    assert got == {("StdPT_StdFT", 0, 0), ("PausePT_StdFT", 0, 0), ("StdPT_PauseFT (prepend)", 2, 2),
                   ("PausePT_PauseFT (prepend)", 2, 2), ("StdPT_StdFT + filler '.'", 0, 2)} | sweep
    for row in result["rows"]:
        assert len(row["values"]) == 2
        assert row["mean"] == pytest.approx(sum(row["values"]) / 2)
    runs = result["runs"]
    assert {r["seed"] for r in runs} == {0, 1}
    assert all((r["pause_frac"] > 0) == r["config"].startswith("PausePT") for r in runs)
    assert json.load(open(tmp_path / "cmp" / "compare.json"))["table"] == result["table"]
    assert result["table"] in capsys.readouterr().out
    assert len(result["table"].splitlines()) == 2 + len(got)
    order = [r["config"] for r in result["rows"]]
    assert order.index("StdPT_StdFT") < order.index("StdPT_PauseFT") < order.index("PausePT_StdFT") \
        < order.index("PausePT_PauseFT")


# ----------------------------------------------------------------------------------------------
# DDP: two processes on halves of each global batch end with the same model as one process.

def _ddp_worker(rank, world_size, port, cfg, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, _, results = finetune.finetune(cfg, (rank, world_size, "cpu"), progress=False)
        if rank == 0:
            torch.save({"model": model.state_dict(), "results": results}, out)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_one_process(tmp_path):
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt"), task="world:add", n_train=64, n_eval=7,
                         num_pauses=2, max_steps=4, batch_size=8, lr=3e-3, warmup_steps=1, out_dir=str(tmp_path / "one"))
    one, _, one_results = finetune.finetune(cfg, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, FinetuneConfig(**{**asdict(cfg), "out_dir": str(tmp_path / "two")}),
                                str(tmp_path / "two.pt")), nprocs=2)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    for name, p in one.state_dict().items():
        torch.testing.assert_close(two["model"][name], p, atol=1e-5, rtol=1e-4)
    assert two["results"]["value"] == one_results["value"] and two["results"]["num_examples"] == 7


# ----------------------------------------------------------------------------------------------
# The command line.

def test_command_line_bad_input(tmp_path):
    with pytest.raises(SystemExit):
        finetune.parse_args(["--ckpt", "x.pt", "--num_pauses", "-1"])
    with pytest.raises(SystemExit):
        finetune.parse_args(["--task", "world:add"])  # neither --ckpt nor --compare
    with pytest.raises(ValueError, match="unknown task 'mmlu'; known tasks: gsm8k, squad"):
        finetune.main(["--ckpt", "x.pt", "--task", "mmlu"])
    with pytest.raises(SystemExit, match="python train.py"):
        finetune.main(["--ckpt", str(tmp_path / "missing.pt"), "--task", "world:add"])
    cfg = finetune.parse_args(["--ckpt", "x.pt", "--num_pauses", "0", "--minf_sweep", "--where", "prepend"])
    assert cfg.num_pauses == 0 and cfg.minf_sweep and cfg.where == "prepend" and cfg.num_pauses_eval == -1
