"""finetune.py and its evaluation (tasks/evaluate.py) against plain twins: rows with pauses and
left-cut prompts, batched choice scoring against a per-choice loop, batched pause-inference against
plain greedy decoding one prompt at a time, two-process DDP against one process; tiny finetuning
runs, and bad input refused before any step. The fault campaign is in test_finetune_faults.py."""
import json
import os
import socket
from contextlib import nullcontext
from dataclasses import asdict, replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import finetune
import tasks
from tools import checkpoint
from tools.checkpoint import save_checkpoint
from tools.export import export_hf
from data import get_tokenizer
from finetune import FinetuneConfig, training_rows
from model import GPT, GPTConfig
from pause import finetune_example
from tasks import BUILTIN, TASKS
from tasks.evaluate import (choice_inputs, generate_answers, generate_inputs, score_choices,
                            sum_logprobs)
from tools.common import UserError, parse_config

TOK = get_tokenizer("byte")
P = TOK.pause_id
ADD = BUILTIN["world:add"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(seed=0, block_size=64, vocab_size=TOK.vocab_size):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2,
                         n_embd=32))


def save_tiny_ckpt(path, pause_frac=0.0, vocab_size=TOK.vocab_size, seed=0, block_size=64,
                   tokenizer="byte"):
    """A checkpoint shaped like train.py's (the fields a pretraining checkpoint holds)."""
    model = tiny_model(seed, block_size, vocab_size)
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config), "step": 0,
                     "config": {}, "optimizer": {}, "loader": {}, "tokenizer": tokenizer,
                     "pause_id": get_tokenizer(tokenizer).pause_id, "pause_frac": pause_frac},
                    str(path))
    return str(path)


def run_eval(model, examples, task, num_pauses, where="append", filler=None, max_new=8,
             batch_size=16):
    """finetune.py's evaluation: one of the two paths, by the kind of the task."""
    block_size, delay = model.config.block_size, P if filler is None else filler
    if task.kind == "choice":
        inputs = choice_inputs(examples, TOK, block_size, num_pauses, delay, where)
        records = score_choices(model, TOK, examples, inputs, batch_size, nullcontext())
    else:
        inputs = generate_inputs(examples, task, TOK, block_size, num_pauses, delay, where,
                                 max_new, filler is not None)
        records = generate_answers(model, TOK, task, examples, inputs,
                                   0 if filler else num_pauses, where, batch_size, nullcontext())
    assert len(records) == len(examples)  # one record per example, in order
    return records, sum(r["cut"] for r in records)


# ----------------------------------------------------------------------------------------------
# Rows: prompt + pauses + answer, the prompt cut from the left when it does not fit.

@pytest.mark.parametrize("where", ["append", "prepend"])
def test_training_rows_cut_long_prompts_from_the_left(where):
    long_prompt = "Zürich é " * 40 + "What is 4+38?"  # 2 bytes a character: 2 byte tokens
    examples = [{"prompt": long_prompt, "target": " 42"}, {"prompt": "4+38=", "target": "42"}]
    rows, cut = training_rows(examples, ADD, TOK, 64, 10, where)
    assert cut == 1
    for ex, (x, y) in zip(examples, rows):
        prompt = list(ex["prompt"].encode())
        target = list(ex["target"].encode()) + [10]  # the answer ends in "\n"
        room = 64 - 10 - len(target) + 1
        kept = prompt[-room:]
        pauses = [P] * 10
        expect_x = (kept + pauses if where == "append" else pauses + kept) + target[:-1]
        assert x.tolist() == expect_x and len(x) <= 64
        # loss on the whole answer only
        assert y.tolist() == [-1] * (len(expect_x) - len(target)) + target
    with pytest.raises(UserError, match="--num_pauses .M_ft. 10 and an answer of 61 tokens leave"):
        training_rows([{"prompt": "x", "target": "1" * 60}], ADD, TOK, 64, 10, "append")


def test_gsm8k_answers_end_with_the_number_then_endoftext():
    solution = "She has 2+3=<<2+3=5>>5 apples.\n#### 5"
    (x, y), = training_rows([{"prompt": "Question: q\nAnswer:", "target": " " + solution}],
                            TASKS["gsm8k"], TOK, 128, 2, "append")[0]
    answer = [t for t in y.tolist() if t != -1]
    assert answer == list((" " + solution).encode()) + [TOK.eot_id]  # '#### 5', then the stop token


# ----------------------------------------------------------------------------------------------
# Evaluation against plain twins.

def plain_log_probs(model, seq):
    """lm-evaluation-harness's log-probabilities: a softmax over every output row."""
    return F.log_softmax(model(torch.tensor([seq]))[0][0].float(), -1)


def plain_next(model, seq):
    """The greedy decoder's next token: the pause and the vocabulary's padding banned."""
    logits = model(torch.tensor([seq]))[0][0, -1, :model.config.vocab_size]
    logits[P] = float("-inf")
    return int(logits.argmax())


@pytest.mark.parametrize("num_pauses,where,filler", [(0, "append", None), (3, "append", None),
                                                     (3, "prepend", None), (4, "append", ord("."))])
def test_choice_scoring_equals_a_plain_per_choice_loop(num_pauses, where, filler):
    model = tiny_model(1).eval()
    examples = [{"prompt": "Question: which is heavier?\nAnswer:",
                 "choices": [" iron", " a feather", " x"], "label": 0},
                {"prompt": "Pick one:", "choices": [" yes", " no"], "label": 1},
                {"prompt": "A long context. " * 10 + "End:",
                 "choices": [" Ünïcödé", " ascii only"], "label": 0}]
    records, cut = run_eval(model, examples, TASKS["piqa"], num_pauses, where, filler, batch_size=3)
    assert cut == 1  # the third prompt (160 bytes) is cut to fit the context of 64
    for ex, rec in zip(examples, records):
        choices = [list(c.encode()) for c in ex["choices"]]
        room = 64 - num_pauses - max(map(len, choices)) + 1
        prompt = list(ex["prompt"].encode())[-room:]
        delay = [filler if filler is not None else P] * num_pauses
        prefix = prompt + delay if where == "append" else delay + prompt
        sums = []
        for c in choices:
            logp = plain_log_probs(model, prefix + c[:-1])
            sums.append(sum(logp[len(prefix) - 1 + k, t].item() for k, t in enumerate(c)))
        # acc: the largest sum; acc_norm: the largest sum per character of the text without its
        # leading space (lm-evaluation-harness)
        per_char = [s / len(text.strip()) for s, text in zip(sums, ex["choices"])]
        expect = {"acc": max(range(len(sums)), key=sums.__getitem__),
                  "acc_norm": max(range(len(sums)), key=per_char.__getitem__)}
        assert rec["prediction"] == expect
        assert rec["metrics"] == {k: float(i == ex["label"]) for k, i in expect.items()}
        # the batched sums themselves (rows of several lengths, right-padded together)
        rows = [finetune_example(prefix if filler else prompt, c, 0 if filler else num_pauses, P,
                                 where) for c in choices]
        batched = sum_logprobs(model, rows, TOK.eot_id, 2, nullcontext())
        assert batched == pytest.approx(sums, abs=1e-4)


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


def plain_greedy(model, seq, max_new, stops):
    new = []
    for _ in range(max_new):
        nxt = plain_next(model, seq + new)
        if nxt in stops:
            break
        new.append(nxt)
    return new


PROMPTS = ["12+3=", "7+1=", "Ü" * 40 + "9+9=", "1=", "12+34+5=", "3+", "99+1="]


@pytest.mark.parametrize("num_pauses,where,filler", [(0, "append", None), (5, "append", None),
                                                     (5, "prepend", None), (5, "append", ord("."))])
def test_pause_inference_equals_plain_greedy_decoding(digit_model, num_pauses, where, filler):
    model = digit_model
    examples = [{"prompt": p, "answers": ["15"], "target": "15"} for p in PROMPTS]
    max_new = 6
    # batches of 4 prompts of different lengths: the batched path against one prompt at a time
    records, cut = run_eval(model, examples, ADD, num_pauses, where, filler, max_new, batch_size=4)
    assert cut == 1  # the third prompt: 84 bytes + pauses + 6 new tokens > 64
    for ex, rec in zip(examples, records):
        prompt = list(ex["prompt"].encode())[-(64 - num_pauses - max_new):]
        delay = [filler if filler is not None else P] * num_pauses
        new = plain_greedy(model, prompt + delay if where == "append" else delay + prompt, max_new,
                           (10, TOK.eot_id))
        assert P not in new
        # the gold answer's teacher-forced loss, with room kept for the answer instead of new tokens
        target = list(b"15\n")
        prompt = list(ex["prompt"].encode())[-(64 - num_pauses - len(target) + 1):]
        seq = prompt + delay if where == "append" else delay + prompt
        logp = plain_log_probs(model, seq + target[:-1])
        nll = -sum(logp[len(seq) - 1 + k, t].item() for k, t in enumerate(target))
        assert rec["answer_nll"] == pytest.approx(nll, abs=1e-4) and rec["answer_tokens"] == 3
        assert rec["prediction"] == TOK.decode(new)
        assert rec["metrics"] == {"exact": float(TOK.decode(new).strip() == "15")}
    assert any(r["prediction"] for r in records)


@pytest.mark.parametrize("filler", [None, ord(".")])
def test_batched_evaluation_gives_the_predictions_of_batch_1(digit_model, filler):
    examples = [{"prompt": p * k, "answers": ["8"], "target": "8"} for k in (1, 2) for p in PROMPTS]
    one, _ = run_eval(digit_model, examples, ADD, 4, filler=filler, max_new=5, batch_size=1)
    eight, _ = run_eval(digit_model, examples, ADD, 4, filler=filler, max_new=5, batch_size=8)
    assert [r["prediction"] for r in one] == [r["prediction"] for r in eight]
    nll = [r["answer_nll"] for r in one]
    assert nll == pytest.approx([r["answer_nll"] for r in eight], abs=1e-4)
    assert len({r["prediction"] for r in one}) > 1  # the prompts do not all give one answer


def test_gsm8k_decodes_past_newlines_and_lambada_exactly_the_targets_length(digit_model):
    examples = [{"prompt": p, "answers": ["x\n#### 15"], "target": " 15"} for p in PROMPTS[:2]]
    records, _ = run_eval(digit_model, examples, TASKS["gsm8k"], 2, max_new=12, batch_size=2)
    for ex, rec in zip(examples, records):
        new = plain_greedy(digit_model, list(ex["prompt"].encode()) + [P] * 2, 12, (TOK.eot_id,))
        assert rec["prediction"] == TOK.decode(new) and "\n" in rec["prediction"]  # no stop at '\n'
    # LAMBADA: as many greedy tokens as the target has, whatever they are (newlines too)
    examples = [{"prompt": p, "answers": [w], "target": " " + w} for p, w in
                [("12+3=", "15\n7+1=8"), ("7+1", "=8"), ("1", "2+3=15\n7")]]
    task = TASKS["lambada"]
    records, _ = run_eval(digit_model, examples, task, 0, max_new=9, batch_size=3)
    for ex, rec in zip(examples, records):
        n = len(ex["target"].encode())
        new = plain_greedy(digit_model, list(ex["prompt"].encode()), n, ())
        assert len(new) == n and rec["prediction"] == TOK.decode(new)
        assert rec["metrics"] == tasks.score(task, TOK.decode(new), ex["answers"])


# ----------------------------------------------------------------------------------------------
# Finetuning runs.

def test_finetune_loss_falls_and_results_are_written(tmp_path, capsys):
    ckpt = save_tiny_ckpt(tmp_path / "ckpt.pt")
    cfg = FinetuneConfig(ckpt=ckpt, task="world:add", n_train=256, n_eval=20, num_pauses=3,
                         max_steps=60, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                         log_interval=10, out_dir=str(tmp_path / "ft"), save=True)
    _, results = finetune.finetune(cfg, progress=False)
    log = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    # from ln(258) = 5.55 towards the digits' entropy
    assert losses[0] > 5.0 and losses[-1] < losses[0] - 2.0
    written = json.load(open(tmp_path / "ft" / "results.json"))
    assert written == results and log[-1]["eval"] == results
    for key, value in {"task": "world:add", "config": "StdPT_PauseFT", "num_pauses": 3,
                       "num_pauses_eval": 3, "metric": "exact", "num_examples": 20,
                       "whole_split": False, "seed": 0, "truncated_train": 0,
                       "source": "exact string match"}.items():
        assert results[key] == value
    predictions = [json.loads(line) for line in open(tmp_path / "ft" / "predictions.jsonl")]
    assert len(predictions) == 20
    exact = 100 * sum(p["prediction"].strip() == p["answers"][0] for p in predictions) / 20
    assert results["metrics"] == {"exact": pytest.approx(exact)}
    assert results["value"] == pytest.approx(exact)
    out = capsys.readouterr().out
    assert f"exact {exact:.1f}% on 20 examples (generated), scored as exact string match" in out
    # the saved model reloads as a finetuned checkpoint, and finetunes further
    saved = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    assert saved["finetune_config"]["num_pauses"] == 3
    again = replace(cfg, ckpt=str(tmp_path / "ft" / "ckpt.pt"), max_steps=1, save=False,
                    out_dir=str(tmp_path / "ft2"))
    assert finetune.finetune(again, progress=False)[1]["num_examples"] == 20


def squad_rows(n, split, words=30):
    return [{"id": str(i), "title": "T", "question": f"{split} question {i}?",
             "context": f"Fact {i}: " + "ünïcode context words " * words,
             "answers": {"text": ["yes", "yes", "Yes."], "answer_start": [0, 0, 0]}}
            for i in range(n)]


def squad_dir(tmp_path, n, words=30):
    os.makedirs(tmp_path / "data" / "squad", exist_ok=True)
    for split in ("train", "validation"):
        with open(tmp_path / "data" / "squad" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in squad_rows(n, split, words))
    return str(tmp_path / "data")


def test_finetune_on_a_real_task_counts_cut_prompts_and_reports_every_metric(tmp_path, capsys):
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt", pause_frac=0.1), task="squad",
                         data=squad_dir(tmp_path, 6), num_pauses=4, max_steps=2, batch_size=2,
                         out_dir=str(tmp_path / "ft"))
    _, results = finetune.finetune(cfg, progress=False)
    assert results["config"] == "PausePT_PauseFT" and results["metric"] == "em"
    assert results["truncated_train"] == 6 and results["truncated_eval"] == 6
    assert results["num_examples"] == 6 and results["whole_split"] is True  # --n_eval -1: all of it
    predictions = [json.loads(line) for line in open(tmp_path / "ft" / "predictions.jsonl")]
    for key in ("em", "f1"):  # SQuAD v1.1's two metrics, each the mean over the examples
        per_example = [tasks.score("squad", p["prediction"], p["answers"])[key]
                       for p in predictions]
        assert results["metrics"][key] == pytest.approx(100 * sum(per_example) / 6)
    assert set(results["metrics"]) == {"em", "f1"} and results["value"] == results["metrics"]["em"]
    assert results["source"] == TASKS["squad"].source
    out = capsys.readouterr().out
    assert "6 prompts cut from the left" in out
    assert "on 6 examples (the whole split; 6 of them cut from the left to fit)" in out
    # a subset is the user's choice, and says so
    cfg = replace(cfg, n_eval=3, data_seed=1, out_dir=str(tmp_path / "sub"))
    _, results = finetune.finetune(cfg, progress=False)
    assert results["num_examples"] == 3 and results["whole_split"] is False
    assert "on 3 examples (a random subset, --data_seed 1; 3 of them" in capsys.readouterr().out


def test_evaluation_only_runs_need_no_training_file_and_name_the_model_it_carries(tmp_path):
    data = squad_dir(tmp_path, 4, words=2)
    eval_file = os.path.join(data, "squad", "validation.jsonl")
    ckpt = save_tiny_ckpt(tmp_path / "c.pt", pause_frac=0.1)
    for m_ft, name in [(3, "PausePT_PauseFT"), (0, "PausePT_StdFT")]:
        ft = FinetuneConfig(ckpt=ckpt, task="squad", data=data, num_pauses=m_ft, max_steps=2,
                            batch_size=2, max_new_tokens=6, out_dir=str(tmp_path / f"ft{m_ft}"),
                            save=True)
        _, trained = finetune.finetune(ft, progress=False)
        finetuned = str(tmp_path / f"ft{m_ft}" / "ckpt.pt")
        # the finetuned model as it is, from the evaluation file alone, on the command line;
        # M_inf defaults to the model's own M_ft, whatever --num_pauses says
        out = tmp_path / f"ev{m_ft}"
        finetune.main(["--ckpt", finetuned, "--task", "squad", "--eval_data", eval_file,
                       "--max_steps", "0", "--max_new_tokens", "6", "--out_dir", str(out)])
        results = json.load(open(out / "results.json"))
        assert results["config"] == name == trained["config"]
        assert results["num_pauses"] == results["num_pauses_eval"] == m_ft
        assert results["train_examples"] == 0 and results["steps"] == 0
        # the same scores as the finetuning run's own evaluation of that model
        assert results["metrics"] == trained["metrics"]
        assert results["answer_loss"] == pytest.approx(trained["answer_loss"], abs=1e-6)
        predictions = [open(d / "predictions.jsonl").read() for d in (out, tmp_path / f"ft{m_ft}")]
        assert predictions[0] == predictions[1]
    # --data DIR that holds the evaluation split only
    only = tmp_path / "only" / "squad"
    only.mkdir(parents=True)
    (only / "validation.jsonl").write_bytes(open(eval_file, "rb").read())
    cfg = FinetuneConfig(ckpt=finetuned, task="squad", data=str(tmp_path / "only"), max_steps=0,
                         num_pauses_eval=2, out_dir=str(tmp_path / "ev_dir"))
    cfg.check()
    _, results = finetune.finetune(cfg, progress=False)
    assert results["config"] == "PausePT_StdFT" and results["num_pauses_eval"] == 2
    # without training answers, the decoding room comes from the evaluation answers: " yes\n" + 2
    assert results["max_new_tokens"] == len(b" yes\n") + 2
    # a training run still needs its training split
    with pytest.raises(UserError, match="no train file for squad"):
        replace(cfg, max_steps=1).check()


def test_commonsense_qa_with_score_choices_is_trained_and_scored_on_the_letters(tmp_path):
    os.makedirs(tmp_path / "commonsense_qa")
    choices = [{"label": lab, "text": t} for lab, t in zip("ABCDE", "ant bee cat dog elk".split())]
    for name in ("train_rand_split.jsonl", "dev_rand_split.jsonl"):
        with open(tmp_path / "commonsense_qa" / name, "w") as f:
            for i in range(3):
                f.write(json.dumps({"question": {"stem": f"Which {i}?", "choices": choices},
                                    "answerKey": "ABCDE"[i]}) + "\n")
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt"), task="commonsense_qa",
                         data=str(tmp_path), score_choices=True, max_steps=0, num_pauses=2,
                         out_dir=str(tmp_path / "ft"))
    examples, whole = finetune.load_examples(cfg, "train")
    assert [e["target"] for e in examples] == [" A", " B", " C"] and whole
    assert examples[0]["choices"] == [" A", " B", " C", " D", " E"]
    _, results = finetune.finetune(cfg, progress=False)
    assert results["metric"] == "acc" and set(results["metrics"]) == {"acc", "acc_norm"}
    assert "letters" in results["source"] and results["answer_loss"] is None


def test_init_from_a_gpt2_directory_is_stdpt(tmp_path):
    ckpt = save_tiny_ckpt(tmp_path / "g.pt", vocab_size=get_tokenizer("gpt2").vocab_size,
                          tokenizer="gpt2")
    export_hf(ckpt, tmp_path / "hf")  # a directory in the Hugging Face GPT-2 layout
    cfg = FinetuneConfig(init_from=str(tmp_path / "hf"), task="world:add", n_train=16, n_eval=4,
                         num_pauses=2, max_steps=0, out_dir=str(tmp_path / "ev"))
    model, results = finetune.finetune(cfg, progress=False)
    # evaluated as it is: a StdPT model that no finetuning has touched
    assert results["config"] == "StdPT" and results["pause_frac"] == 0.0
    assert results["num_pauses"] is None and results["num_pauses_eval"] == 2
    assert results["init_from"] == str(tmp_path / "hf") and results["ckpt"] == ""
    x = torch.tensor([[464, 3290, 50257, 318]])  # with the pause id
    original = tiny_model(0, vocab_size=50258).eval()
    torch.testing.assert_close(model(x)[0], original(x)[0])  # no step: GPT-2's weights as loaded
    cfg = replace(cfg, max_steps=1, batch_size=4, save=True, out_dir=str(tmp_path / "ft"))
    _, results = finetune.finetune(cfg, progress=False)
    assert results["config"] == "StdPT_PauseFT" and results["num_pauses"] == 2
    saved = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    assert (saved["tokenizer"], saved["pause_id"], saved["pause_frac"]) == ("gpt2", 50257, 0.0)


def test_checkpoint_without_a_pause_token_is_refused(tmp_path):
    # bytes + <|endoftext|>, no <|pause|>
    ckpt = save_tiny_ckpt(tmp_path / "nopause.pt", vocab_size=257)
    with pytest.raises(UserError, match="has no pause token"):
        checkpoint.load_pretrained(ckpt, "", "cpu")


# ----------------------------------------------------------------------------------------------
# DDP: two processes on halves of each global batch end with the same model as one process.

def _ddp_worker(rank, world_size, port, cfg, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, results = finetune.finetune(cfg, (rank, world_size, "cpu"), progress=False)
        if rank == 0:
            torch.save({"model": model.state_dict(), "results": results}, out)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_one_process(tmp_path):
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt"), task="world:add", n_train=64,
                         n_eval=7, num_pauses=2, max_steps=4, batch_size=8, lr=3e-3, warmup_steps=1,
                         out_dir=str(tmp_path / "one"))
    one, one_results = finetune.finetune(cfg, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, replace(cfg, out_dir=str(tmp_path / "two")),
                                str(tmp_path / "two.pt")), nprocs=2)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    for name, p in one.state_dict().items():
        torch.testing.assert_close(two["model"][name], p, atol=1e-5, rtol=1e-4)
    assert two["results"]["value"] == one_results["value"] and two["results"]["num_examples"] == 7
    predictions = [[json.loads(line)["prediction"] for line in
                    open(tmp_path / d / "predictions.jsonl")] for d in ("one", "two")]
    assert predictions[0] == predictions[1]


# ----------------------------------------------------------------------------------------------
# Bad input: refused with a message naming the flag, before any finetuning step.

@pytest.fixture
def no_training(monkeypatch):
    """Any finetuning step fails the test: the checks must come first."""
    def step(*args):
        raise AssertionError("a finetuning step ran before the bad setting was found")
    monkeypatch.setattr(finetune, "lr_at", step)


def refused(argv, match, capsys):
    """finetune.main(argv) exits non-zero with one line (argparse's, or main's) holding match."""
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    code = e.value.code
    err = capsys.readouterr().err
    # main's own line, or argparse's last line (after its usage text)
    message = code if isinstance(code, str) else err.strip().splitlines()[-1]
    assert code not in (0, None) and match in message, message
    assert "\n" not in message and "Traceback" not in err + message
    assert message.startswith(("finetune.py: error: ", "__main__.py: error: ", "pytest: error: "))
    return message


def test_command_line_choices_and_required_model(tmp_path, capsys):
    refused(["--ckpt", "x.pt", "--task", "mmlu"],
            "invalid choice: 'mmlu' (choose from 'gsm8k', 'squad'", capsys)
    refused(["--ckpt", "x.pt", "--where", "middle"], "invalid choice: 'middle'", capsys)
    refused(["--task", "world:add"], "give exactly one pretrained model: --ckpt", capsys)
    refused(["--ckpt", "x.pt", "--init_from", "gpt2"], "give exactly one pretrained model", capsys)
    refused(["--ckpt", str(tmp_path / "missing.pt"), "--task", "world:add",
             "--out_dir", str(tmp_path / "o")], "python train.py", capsys)
    cfg = parse_config(FinetuneConfig, "", ["--ckpt", "x.pt", "--num_pauses", "0",
                                            "--where", "prepend"], finetune.CHOICES)
    assert cfg.num_pauses == 0 and cfg.where == "prepend" and cfg.num_pauses_eval == -1
    assert cfg.n_train == cfg.n_eval == -1  # the task's default: the whole split, or 4000/200 made
    with pytest.raises(SystemExit):  # --help lists every flag with its text and its choices
        finetune.main(["--help"])
    out = capsys.readouterr().out
    assert "--overwrite" in out and "world:add" in out and "M_inf" in out


def test_the_configuration_is_checked_once(tmp_path, monkeypatch):
    calls = []
    check = FinetuneConfig.check
    monkeypatch.setattr(FinetuneConfig, "check", lambda cfg: calls.append(1) or check(cfg))
    finetune.main(["--ckpt", save_tiny_ckpt(tmp_path / "c.pt"), "--task", "world:add",
                   "--n_train", "8", "--n_eval", "2", "--max_steps", "1", "--batch_size", "4",
                   "--out_dir", str(tmp_path / "o")])
    assert calls == [1] and (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("flags,match", [
    (["--num_pauses_eval", "250"], "--num_pauses_eval (M_inf) 250 and"),
    (["--max_new_tokens", "300"], "--max_new_tokens 300 leave no room"),
    (["--num_pauses_eval", "57", "--max_new_tokens", "7"],
     "--num_pauses_eval (M_inf) 57 and --max_new_tokens 7"),  # the prompt's room in the context
    (["--eval_batch_size", "0"], "--eval_batch_size must be >= 1"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--log_interval", "0"], "--log_interval must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--n_eval", "0"], "--n_eval is -1 (the task's default) or >= 1"),
    (["--n_train", "-2"], "--n_train is -1 (the task's default) or >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--min_lr", "0.1", "--lr", "0.01"], "--min_lr 0.1 is above --lr 0.01"),
    (["--filler", "ab"], "--filler 'ab' must be one token"),
    (["--max_steps", "0", "--save"], "--save with --max_steps 0"),
])
def test_bad_settings_stop_before_any_step(tmp_path, no_training, capsys, flags, match):
    ckpt = save_tiny_ckpt(tmp_path / "c.pt")
    refused(["--ckpt", ckpt, "--task", "world:add", "--n_train", "8", "--n_eval", "4",
             "--out_dir", str(tmp_path / "o"), "--save", *flags], match, capsys)
    assert not os.path.exists(tmp_path / "o")  # nothing written, not even the log


def test_foreign_files_and_devices_are_refused_saying_what_was_found(tmp_path, no_training,
                                                                     capsys):
    base = ["--task", "world:add", "--out_dir", str(tmp_path / "o")]
    torch.save(tiny_model().state_dict(), tmp_path / "weights.pt")  # a bare state_dict
    refused(["--ckpt", str(tmp_path / "weights.pt"), *base], "found a dict with the keys", capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    refused(["--ckpt", str(tmp_path / "junk.pt"), *base], "expected a ckpt.pt written by train.py",
            capsys)
    if not torch.cuda.is_available():
        refused(["--ckpt", str(tmp_path / "junk.pt"), "--device", "cuda", *base], "no CUDA GPU",
                capsys)
    (tmp_path / "file").write_text("")
    refused(["--ckpt", save_tiny_ckpt(tmp_path / "c.pt"), "--task", "world:add", "--out_dir",
             str(tmp_path / "file")], "is a file, not a directory", capsys)
    assert not os.path.exists(tmp_path / "o")


def test_training_data_is_never_the_evaluation_data(tmp_path, no_training, capsys, monkeypatch):
    data = squad_dir(tmp_path, 3)
    train_file = os.path.join(data, "squad", "train.jsonl")
    base = ["--ckpt", save_tiny_ckpt(tmp_path / "c.pt"), "--task", "squad",
            "--out_dir", str(tmp_path / "o")]
    refused([*base, "--data", train_file], "give the evaluation split with --eval_data FILE",
            capsys)
    refused([*base, "--data", train_file, "--eval_data", train_file], "is the training file",
            capsys)
    refused([*base], "--task squad needs --data DIR", capsys)
    refused(["--ckpt", "c.pt", "--task", "world:add", "--data", data], "are for the real tasks",
            capsys)
    refused([*base, "--data", data, "--score_choices"], "--score_choices is for commonsense_qa",
            capsys)
    # --data DIR: its own training file, however the path is spelled, is refused by name
    os.symlink(train_file, tmp_path / "link.jsonl")
    monkeypatch.chdir(tmp_path)
    for spelling in (train_file, os.path.relpath(train_file), str(tmp_path / "link.jsonl"),
                     "data/squad/../squad/train.jsonl"):
        refused([*base, "--data", data, "--eval_data", spelling], "is the training file", capsys)
        refused([*base, "--data", "data", "--eval_data", spelling], "is the training file", capsys)
    # ... and so is a copy of it, found by its content
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(open(train_file, "rb").read())
    message = refused([*base, "--data", data, "--eval_data", str(copy)], "3 of the 3 evaluation "
                      "examples are training examples too", capsys)
    assert "--eval_data" in message
    assert not os.path.exists(tmp_path / "o")


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path, capsys):
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt"), task="world:add", n_train=8,
                         n_eval=2, max_steps=1, batch_size=4, out_dir=str(tmp_path / "ft"),
                         save=True)
    finetune.finetune(cfg, progress=False)
    before = (tmp_path / "ft" / "results.json").read_bytes()
    with pytest.raises(UserError, match="holds metrics.jsonl and predictions.jsonl and ckpt.pt "
                                        "and results.json of an earlier run") as e:
        replace(cfg, seed=1).check()
    assert "--overwrite" in str(e.value)
    with pytest.raises(UserError, match="of an earlier run"):  # checked again under the lock
        finetune.finetune(replace(cfg, seed=1), progress=False)
    assert (tmp_path / "ft" / "results.json").read_bytes() == before
    _, results = finetune.finetune(replace(cfg, seed=1, overwrite=True, save=False), progress=False)
    assert json.load(open(tmp_path / "ft" / "results.json"))["seed"] == 1
    assert not os.path.exists(tmp_path / "ft" / "ckpt.pt")  # the earlier model is not this one
    assert "removed" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "ft")) == ["metrics.jsonl", "predictions.jsonl",
                                                   "results.json"]


def test_a_non_finite_loss_stops_naming_the_step_and_saves_nothing(tmp_path):
    out = tmp_path / "ft"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"the last good model")
    cfg = FinetuneConfig(ckpt=save_tiny_ckpt(tmp_path / "c.pt"), task="world:add", n_train=32,
                         n_eval=2, max_steps=5, batch_size=8, lr=1e30, warmup_steps=0,
                         log_interval=1, out_dir=str(out), save=True, overwrite=True)
    with pytest.raises(UserError, match=r"step \d: the loss .* not finite.*lower --lr 1e\+30 "
                                        r"\(the log so far: .*\.unfinished/metrics\.jsonl\)"):
        finetune.finetune(cfg, progress=False)
    assert (out / "ckpt.pt").read_bytes() == b"the last good model"
    assert not (out / "results.json").exists() and not (out / "metrics.jsonl").exists()

    def no_nan(name):
        raise AssertionError(f"{name} in metrics.jsonl")
    log = out / finetune.UNFINISHED / "metrics.jsonl"
    rows = [json.loads(line, parse_constant=no_nan) for line in open(log)]
    assert rows and all(r["step"] < 5 for r in rows)
