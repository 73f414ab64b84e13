"""
Pause-finetuning and pause-inference on a downstream task (paper Sec. 3.2-3.3):

    python finetune.py --ckpt out/ckpt.pt --task world:add --num_pauses 10     # a built-in task
    python finetune.py --ckpt out/ckpt.pt --task squad --data data/ --num_pauses 10
    python finetune.py --init_from gpt2 --task gsm8k --data data/ --num_pauses 10  # on GPT-2
    torchrun --standalone --nproc_per_node=8 finetune.py --ckpt out/ckpt.pt --task gsm8k --data ...

The pretrained model (train.py's checkpoint, StdPT or PausePT by its pause_frac, or GPT-2, a StdPT
model) is finetuned with M_ft = --num_pauses pauses after every prompt (M_ft = 0: StdFT), then
evaluated with M_inf = --num_pauses_eval pauses as the task's official script scores it. Writes
out_dir/metrics.jsonl, predictions.jsonl and results.json (scores in %). experiment.py runs it
for the paper's four configurations, StdPT_StdFT, StdPT_PauseFT, PausePT_StdFT, PausePT_PauseFT.
"""
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

import pause
import tasks
from tools import gpt2
from tools.checkpoint import load_model, save_checkpoint
from tools.common import (UserError, append_jsonl, atomic_write, cleanup_ddp, config_parser,
                          json_safe, lr_at, resolve_device, resolve_dtype, setup_ddp, write_json)


@dataclass
class FinetuneConfig:
    # the pretrained model: exactly one of --ckpt and --init_from
    ckpt: str = ""                # train.py's checkpoint (its out_dir/ckpt.pt)
    init_from: str = ""           # GPT-2's weights (a StdPT model): gpt2 ... gpt2-xl, or a DIR
    # the task
    task: str = "world:chain"     # one of the nine real tasks, or a built-in task of the world
    data: str = ""                # real tasks: a DIR (as prepare.py task writes it) or a train FILE
    eval_data: str = ""           # the evaluation FILE; needed when --data is a file
    n_train: int = -1             # training examples; -1: the whole split, or 4000 made (built-in)
    n_eval: int = -1              # evaluation examples; -1: the whole split, or 200 made (built-in)
    data_seed: int = 0            # which random subset a positive n draws; which built-in examples
    # the paper's knobs
    num_pauses: int = 10          # M_ft, pauses after each prompt in finetuning; 0 is StdFT
    num_pauses_eval: int = -1     # M_inf, pauses after each prompt at inference; -1: M_inf = M_ft
    where: str = "append"         # pauses after the prompt, or before it (the paper's ablation)
    filler: str = ""              # evaluate with M_inf copies of this token (e.g. '.') not pauses
    score_choices: bool = False   # commonsense_qa: score the letters by likelihood, not decode
    # optimization: AdamW, linear warmup then cosine decay
    max_steps: int = 250          # optimizer steps; 0 evaluates the pretrained model as it is
    batch_size: int = 32          # examples per step, over all DDP ranks together
    lr: float = 1e-3              # peak learning rate
    min_lr: float = 1e-4          # learning rate at the end of the cosine decay
    warmup_steps: int = 30        # steps of linear warmup
    weight_decay: float = 0.1     # AdamW's, on the matrices only
    grad_clip: float = 1.0        # clip the gradient's norm to this; 0: no clipping
    seed: int = 0                 # the order of the training examples
    # evaluation
    max_new_tokens: int = 0       # 0: the longest training answer + 2, at most 1/4 of the context
    eval_batch_size: int = 16     # prompts decoded (or rows scored) together
    # system and output
    log_interval: int = 25        # steps between two lines of out_dir/metrics.jsonl
    device: str = "auto"          # auto, cpu, cuda, cuda:N (torchrun: cuda:LOCAL_RANK)
    dtype: str = "auto"           # auto: bfloat16 on a GPU that has it, else float32
    out_dir: str = "out_finetune"  # where metrics.jsonl, predictions.jsonl, results.json go
    save: bool = False            # also write the finetuned model to out_dir/ckpt.pt
    overwrite: bool = False       # replace an earlier run's results.json and ckpt.pt in out_dir


# -----------------------------------------------------------------------------------------------
# Rows with pauses. The context is finite: when prompt + pauses + answer do not fit, the prompt is
# cut from the left (its end, next to the question, matters most); pauses and answer never are.

def fit_prompt(prompt_ids, room, settings):
    """(the last `room` tokens of the prompt, whether any were cut); `settings` take the rest."""
    if room < 1:
        raise UserError(f"{settings} leave no room for the prompt in the context; use fewer "
                         "pauses, a shorter answer, or a model with a longer context")
    return (prompt_ids[-room:], True) if len(prompt_ids) > room else (prompt_ids, False)


def answer_rows(prompt_ids, answers, m, delay_id, where, block_size, flag):
    """pause.finetune_example's (x, y) for each answer after the prompt and M pauses (delay_id:
    the pause, or a filler token), and whether the prompt was cut to fit the longest answer."""
    longest = max(map(len, answers))
    kept, cut = fit_prompt(prompt_ids, block_size - m - longest + 1,
                           f"{flag} {m} and an answer of {longest} tokens")
    return [pause.finetune_example(kept, a, m, delay_id, where, block_size) for a in answers], cut


def training_rows(examples, task, tok, block_size, num_pauses, where):
    """The (x, y) row of every example with M_ft pauses, and how many prompts were cut."""
    made = [answer_rows(prompt, [tasks.answer_ids(tok, task, ex["target"])], num_pauses,
                        tok.pause_id, where, block_size, "--num_pauses (M_ft)")
            for ex, prompt in zip(examples, tok.encode_batch([e["prompt"] for e in examples]))]
    return [rows[0] for rows, _ in made], sum(cut for _, cut in made)


def pad_rows(rows, pad_id):
    """Right-pad (x, y) rows into (B, T) tensors: x with any valid id, y with IGNORE (no loss)."""
    xs, ys = zip(*rows)
    return (pad_sequence(xs, batch_first=True, padding_value=pad_id),
            pad_sequence(ys, batch_first=True, padding_value=pause.IGNORE))


# -----------------------------------------------------------------------------------------------
# Evaluation. Multiple-choice tasks by the likelihood of each choice, the others by greedy
# pause-inference; both see the prompt with M_inf pauses (or filler tokens), as in finetuning.

def eval_inputs(examples, task, tok, block_size, m_inf, where, filler_id, max_new, by_choice):
    """What evaluation feeds the model, built before finetuning so that settings which do not fit
    the context stop the run before its first step. Per example of this DDP rank: teacher-forced
    rows (one per choice, or the gold answer for its loss) and, to decode, prefix and length."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = range(rank, len(examples), world)
    delay_id = tok.pause_id if filler_id is None else filler_id  # pauses, or filler tokens
    inputs = []
    for i, prompt in zip(mine, tok.encode_batch([examples[i]["prompt"] for i in mine])):
        ex = examples[i]
        answers = ([tok.encode(c) for c in ex["choices"]] if by_choice
                   else [tasks.answer_ids(tok, task, ex["target"])])
        rows, cut = answer_rows(prompt, answers, m_inf, delay_id, where, block_size,
                                "--num_pauses_eval (M_inf)")
        inputs.append({"index": i, "cut": cut, "rows": rows})
        if not by_choice:  # decoding needs room for max_new tokens, not for the gold answer
            kept, cut = fit_prompt(prompt, block_size - m_inf - max_new, "--num_pauses_eval "
                                   f"(M_inf) {m_inf} and --max_new_tokens {max_new}")
            if filler_id is not None:  # the filler baseline's tokens go into the prefix itself
                kept = pause.append_pauses(kept, m_inf, filler_id, where).tolist()
            n_new = len(tok.encode(ex["target"])) if task.stop == "length" else max_new
            inputs[-1].update(cut=cut, prefix=kept, n_new=n_new)
    return inputs


@torch.no_grad()
def sum_logprobs(model, rows, pad_id, pause_id, batch_size, autocast):
    """Sum of the log-probabilities of each row's targets (y != IGNORE), batch_size rows at once."""
    out = []
    for i in range(0, len(rows), batch_size):
        x, y = (t.to(model.device) for t in pad_rows(rows[i:i + batch_size], pad_id))
        with autocast:
            logits = model(x)[0]
        # Score with the distribution the decoder uses: the vocabulary's padding ids and the pause
        # (never a target) get no probability. Only the scored positions are normalized.
        scored = y != pause.IGNORE
        logits = logits[scored][:, :model.config.vocab_size].float()
        logits[:, pause_id] = float("-inf")
        picked = F.log_softmax(logits, dim=-1).gather(1, y[scored].unsqueeze(1)).squeeze(1)
        per_row = torch.zeros(x.size(0), device=picked.device)
        out += per_row.index_add_(0, scored.nonzero()[:, 0], picked).tolist()
    return out


def evaluate(model, tok, task, examples, inputs, num_pauses, where="append", batch_size=16,
             autocast=nullcontext(), progress=False):
    """Score every example of `inputs` (from eval_inputs; num_pauses is 0 for the filler
    baseline). Returns records, each with its prediction and `metrics` (in [0, 1], by tasks.score
    or tasks.choose), gathered from every DDP rank in example order."""
    model.eval()
    logps = iter(sum_logprobs(model, [r for inp in inputs for r in inp["rows"]], tok.eot_id,
                              tok.pause_id, batch_size, autocast))
    # Greedy pause-inference, batch_size prompts at once. Prompts sorted by length share a batch,
    # so little of it is left padding.
    todo = sorted((inp for inp in inputs if "prefix" in inp), key=lambda inp: len(inp["prefix"]))
    new, stop = {}, tasks.stop_ids(tok, task)
    for s in tqdm(range(0, len(todo), batch_size), desc="decode", disable=not progress):
        batch = todo[s:s + batch_size]
        with autocast:
            out = pause.pause_generate(model, [inp["prefix"] for inp in batch], num_pauses,
                                       tok.pause_id, max(inp["n_new"] for inp in batch),
                                       where=where, stop_ids=stop)
        for inp, ids in zip(batch, out):  # a row that asked for fewer tokens keeps its own number
            new[inp["index"]] = ids[:inp["n_new"]]
    records = []
    for inp in inputs:
        ex, rec = examples[inp["index"]], {"index": inp["index"], "cut": inp["cut"]}
        if "prefix" not in inp:  # multiple choice: lm-evaluation-harness's acc and acc_norm
            picks = tasks.choose([next(logps) for _ in inp["rows"]], ex["choices"])
            records.append({**rec, "prediction": picks, "label": ex["label"],
                            "metrics": {k: float(i == ex["label"]) for k, i in picks.items()}})
            continue
        # The gold answer's loss in nats per token: a smooth measure that still separates
        # configurations when a small model gets few answers exactly right.
        prediction = tok.decode(new[inp["index"]])
        records.append({**rec, "prediction": prediction, "answers": ex["answers"],
                        "answer_nll": -next(logps),
                        "answer_tokens": int((inp["rows"][0][1] != pause.IGNORE).sum()),
                        "metrics": tasks.score(task, prediction, ex["answers"])})
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        records = sorted((r for rs in gathered for r in rs), key=lambda r: r["index"])
    return records


# -----------------------------------------------------------------------------------------------
# One finetuning run.

def check_config(cfg):
    """Every setting that can be checked without the model, before any work."""
    lowest = {"batch_size": 1, "eval_batch_size": 1, "log_interval": 1, "seed": 0, "data_seed": 0,
              "max_steps": 0, "warmup_steps": 0, "num_pauses": 0, "num_pauses_eval": -1,
              "max_new_tokens": 0, "min_lr": 0, "grad_clip": 0, "weight_decay": 0, "n_train": -1,
              "n_eval": -1}
    for wrong, message in [
            *((not getattr(cfg, f) >= low, f"--{f} must be >= {low}, got {getattr(cfg, f)}")
              for f, low in lowest.items()),  # NaN is >= nothing
            (not cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
            (0 in (cfg.n_train, cfg.n_eval), "--n_train and --n_eval are -1 (the task's default) "
             "or >= 1, not 0"),
            (bool(cfg.ckpt) == bool(cfg.init_from), "give exactly one pretrained model: --ckpt (a "
             f"train.py checkpoint) or --init_from ({', '.join(gpt2.NAMES)} or a DIR)"),
            (cfg.score_choices and cfg.task != "commonsense_qa", "--score_choices is for "
             "commonsense_qa (piqa and hellaswag are always scored by likelihood)"),
            (os.path.isfile(cfg.out_dir), f"--out_dir {cfg.out_dir} is a file; name a directory")]:
        if wrong:
            raise UserError(message)
    try:  # --data and --eval_data: files for a real task, never one file for both splits
        tasks.check_data(cfg.task, cfg.data, cfg.eval_data)
    except ValueError as e:
        raise UserError(str(e)) from None
    resolve_device(cfg.device)  # a GPU asked for on a machine without one is refused here
    held = [f for f in ("results.json", "ckpt.pt") if os.path.exists(os.path.join(cfg.out_dir, f))]
    if held and not cfg.overwrite:
        raise UserError(f"--out_dir {cfg.out_dir} already holds {' and '.join(held)} of an "
                         "earlier run; give another --out_dir, or --overwrite to replace them")


def load_examples(cfg, split):
    """(examples, whether they are the whole split). -1 is the task's default: the whole split
    of a real task, 4000 training or 200 evaluation examples made for a built-in one."""
    n = cfg.n_train if split == "train" else cfg.n_eval
    n = {"train": 4000, "test": 200}[split] if cfg.task in tasks.BUILTIN and n == -1 else n
    path = cfg.eval_data if split == "test" and cfg.eval_data else cfg.data
    try:
        examples = tasks.load_task(cfg.task, path, split, n, seed=cfg.data_seed)
    except ValueError as e:
        raise UserError(f"--task {cfg.task}: {e}") from None
    return (tasks.as_letters(examples) if cfg.score_choices else examples), n == -1


def finetune(cfg, env=None, progress=True):
    """Finetune the pretrained model on cfg.task with M_ft = cfg.num_pauses, then evaluate it with
    M_inf pauses. env: (rank, world_size, device) from common.setup_ddp(). Returns (model,
    results); rank 0 writes them to out_dir."""
    check_config(cfg)
    rank, world_size, device = env or (0, 1, resolve_device(cfg.device))
    master, device_type = rank == 0, torch.device(device).type
    _, autocast = resolve_dtype(cfg.dtype, device)
    if cfg.batch_size % world_size:
        raise UserError(f"--batch_size {cfg.batch_size} must be a multiple of the {world_size} "
                         "DDP ranks")
    task = tasks.CSQA_LETTERS if cfg.score_choices else tasks.get_task(cfg.task)
    m_ft = cfg.num_pauses
    m_inf = m_ft if cfg.num_pauses_eval < 0 else cfg.num_pauses_eval
    torch.manual_seed(cfg.seed)
    model, tok, pause_frac = load_model(cfg.ckpt, cfg.init_from, device)
    block_size, filler = model.config.block_size, tok.encode(cfg.filler)
    if cfg.filler and len(filler) != 1:
        raise UserError(f"--filler {cfg.filler!r} must be one token of the {tok.name} "
                         f"tokenizer; it is {len(filler)}")
    train_examples, _ = load_examples(cfg, "train")
    eval_examples, whole_split = load_examples(cfg, "test")
    rows, cut_train = training_rows(train_examples, task, tok, block_size, m_ft, cfg.where)
    # Decoding needs room for the answer: by default the longest training answer + 2 tokens.
    max_new = cfg.max_new_tokens or min(block_size // 4, 2 + max(
        len(tasks.answer_ids(tok, task, e["target"])) for e in train_examples))
    if task.stop == "length":  # LAMBADA: exactly as many tokens as its target has
        max_new = max(len(tok.encode(e["target"])) for e in eval_examples)
    inputs = eval_inputs(eval_examples, task, tok, block_size, m_inf, cfg.where,
                         filler[0] if cfg.filler else None, max_new, task.scorer is None)

    # ---- pause-finetuning: AdamW on the loss of the answer tokens
    raw_model = model
    if world_size > 1:
        model = DDP(model, device_ids=[device] if device_type == "cuda" else None)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.lr, device_type=device_type)
    name = ("PausePT" if pause_frac > 0 else "StdPT") + ("_PauseFT" if m_ft > 0 else "_StdFT")
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        atomic_write(log_path, lambda f: None)  # the log starts empty (under --overwrite too)
        cut = f"; {cut_train} prompts cut from the left to fit the context" if cut_train else ""
        print(f"{name} on {cfg.task}: {len(rows)} training rows, M_ft={m_ft}, M_inf={m_inf}, "
              f"{cfg.max_steps} steps of {cfg.batch_size}{cut}")
    # Every rank draws the same global batch from the same generator and keeps its share; the loss
    # is the sum over the global batch's answer tokens divided by their number, so DDP's gradient
    # average equals one process on the whole batch.
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos = torch.randperm(len(rows), generator=gen), 0
    model.train()
    t0, steps_acc = time.time(), 0
    loss_acc = torch.zeros(1, dtype=torch.float64, device=device)  # the losses since the last log
    for step in tqdm(range(cfg.max_steps), desc=name, disable=not (master and progress)):
        # an epoch is one pass over the rows in a random order; a fresh order when it runs out
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(rows), generator=gen), 0
        batch = [rows[i] for i in order[pos:pos + cfg.batch_size].tolist()]
        pos += cfg.batch_size
        n_tokens = sum(int((y != pause.IGNORE).sum()) for _, y in batch)
        x, y = (t.to(device) for t in pad_rows(batch[rank::world_size], tok.eot_id))
        lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits, _ = model(x)
        # only the answer is a target: y is IGNORE on the prompt and the pauses (paper Sec. 3.2)
        loss_sum = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1),
                                   ignore_index=pause.IGNORE, reduction="sum")
        (loss_sum * world_size / n_tokens).backward()  # DDP divides by world_size: undone here
        # The norm is taken even without clipping (max_norm inf scales by 1): after DDP's
        # all-reduce it is the same on every rank, so that all of them stop at the same step.
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip or math.inf)
        loss = loss_sum.item() / n_tokens  # this rank's share of the global batch's loss
        if not math.isfinite(loss + norm.item()):
            raise UserError(f"step {step}: the loss ({loss:.4g}) or its gradient is not finite; "
                             "stopped before the update, nothing saved. The likely cause is a "
                             f"learning rate too high for this model: lower --lr {cfg.lr}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_acc, steps_acc = loss_acc + loss, steps_acc + 1
        if step % cfg.log_interval == 0 or step == cfg.max_steps - 1:
            if world_size > 1:  # the shares of all ranks add up to the global batch's loss
                dist.all_reduce(loss_acc)
            if master:
                append_jsonl({"step": step, "loss": loss_acc.item() / steps_acc, "lr": lr,
                              "time_s": round(time.time() - t0, 2)}, log_path)
            loss_acc, steps_acc = torch.zeros_like(loss_acc), 0

    # ---- pause-inference, scored by the task's official metrics (means over examples, in %)
    records = evaluate(raw_model, tok, task, eval_examples, inputs, 0 if cfg.filler else m_inf,
                       cfg.where, cfg.eval_batch_size, autocast, master and progress)
    metrics = {k: 100.0 * sum(r["metrics"][k] for r in records) / len(records)
               for k in records[0]["metrics"]}
    loss = (sum(r["answer_nll"] for r in records) / sum(r["answer_tokens"] for r in records)
            if "answer_nll" in records[0] else None)
    results = {"task": cfg.task, "config": name + (" (prepend)" if cfg.where == "prepend" else "")
               + (f" + filler {cfg.filler!r}" if cfg.filler else ""), "num_pauses": m_ft,
               "num_pauses_eval": m_inf, "where": cfg.where, "filler": cfg.filler,
               "metric": task.metric, "value": metrics[task.metric], "metrics": metrics,
               "source": task.source, "answer_loss": loss, "num_examples": len(records),
               "whole_split": whole_split, "seed": cfg.seed, "data_seed": cfg.data_seed,
               "pause_frac": pause_frac, "ckpt": cfg.ckpt, "init_from": cfg.init_from,
               "train_examples": len(rows), "steps": cfg.max_steps, "truncated_train": cut_train,
               "truncated_eval": sum(r["cut"] for r in records), "max_new_tokens": max_new,
               "finetune_time_s": round(time.time() - t0, 1)}
    if master:
        write_results(cfg, results, records, raw_model, tok)
    if world_size > 1:
        dist.barrier()  # every rank returns only once rank 0's files are on disk
    return raw_model, results


def write_results(cfg, r, records, model, tok):
    """results.json (r), predictions.jsonl, the eval line of metrics.jsonl; ckpt.pt with --save."""
    append_jsonl({"eval": r}, os.path.join(cfg.out_dir, "metrics.jsonl"))
    atomic_write(os.path.join(cfg.out_dir, "predictions.jsonl"), lambda f: f.writelines(
        json.dumps(json_safe(r), ensure_ascii=False) + "\n" for r in records), mode="w")
    write_json(r, os.path.join(cfg.out_dir, "results.json"))
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.save:
        save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                         "tokenizer": tok.name, "pause_id": tok.pause_id, "pause_frac":
                         r["pause_frac"], "finetune_config": asdict(cfg)}, ckpt_path)
    elif os.path.exists(ckpt_path):  # --overwrite: an earlier run's model is not this one's
        os.remove(ckpt_path)
        print(f"removed {ckpt_path}, the earlier run's (--overwrite without --save)")
    subset = ("the whole split" if r["whole_split"] else "generated" if cfg.task in tasks.BUILTIN
              else f"a random subset, --data_seed {cfg.data_seed}")
    others = "".join(f", {k} {v:.1f}%" for k, v in r["metrics"].items() if k != r["metric"])
    cut = f"; {r['truncated_eval']} of them cut from the left to fit" if r["truncated_eval"] else ""
    print(f"{r['config']} on {cfg.task}: {r['metric']} {r['value']:.1f}%{others} on "
          f"{r['num_examples']} examples ({subset}{cut}), scored as {r['source']}; written to "
          f"{os.path.join(cfg.out_dir, 'results.json')}")


def parse_args(argv=None):
    choices = {"task": [*tasks.TASKS, *tasks.BUILTIN], "where": ["append", "prepend"],
               "dtype": ["auto", "float32", "bfloat16"]}
    return FinetuneConfig(**vars(config_parser(FinetuneConfig, __doc__, choices).parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    try:
        check_config(cfg)  # before any DDP process group is set up
    except UserError as e:
        raise SystemExit(f"finetune.py: error: {e}")
    rank, _, world_size, device = setup_ddp(cfg.device)
    try:
        finetune(cfg, (rank, world_size, device))
    except UserError as e:  # a flag or file refused: one line that names it, no traceback
        raise SystemExit(f"finetune.py: error: {e}")
    finally:
        cleanup_ddp()


if __name__ == "__main__":
    main()
