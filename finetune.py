"""
Pause-finetuning and pause-inference on downstream tasks (paper Sec. 3.2-3.3), and the paper's four
configurations (StdPT_StdFT, StdPT_PauseFT, PausePT_StdFT, PausePT_PauseFT) as one experiment.

    python finetune.py --ckpt out/ckpt.pt --task world:add --num_pauses 10    # one run, built-in task
    python finetune.py --ckpt out/ckpt.pt --task squad --data data/ --num_pauses 10
    torchrun --standalone --nproc_per_node=8 finetune.py --ckpt out/ckpt.pt --task gsm8k --data data/
    python finetune.py --compare          # pretrain std + pause models, then the four configurations

One run loads a pretrained checkpoint (its pause_frac says StdPT or PausePT), finetunes it with
M_ft = --num_pauses pauses after every prompt (loss on the answer only; 0 is StdFT), then evaluates
with M_inf = --num_pauses_eval pauses. It writes out_dir/metrics.jsonl, out_dir/predictions.jsonl
and out_dir/results.json. Task values are percentages.
"""
import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import pause
from tasks import exact_match, f1, get_task, load_task, score_prediction
from common import (cleanup_ddp, load_checkpoint, lr_at, save_checkpoint, setup_ddp, write_json)
from train import TrainConfig, train


@dataclass
class FinetuneConfig:
    # what to finetune, on which task
    ckpt: str = ""                # a pretrained checkpoint (train.py's out_dir/ckpt.pt)
    task: str = "world:chain"     # one of the nine (see TASKS) or a built-in 'world:add|chain|story'
    data: str = ""                # real tasks: a directory (DIR/NAME/ as downloaded) or the training file
    eval_data: str = ""           # the evaluation file, when --data names a file
    n_train: int = 4000           # training examples (built-in: generated; real: the first n; -1: all)
    n_eval: int = 200             # evaluation examples (-1: all)
    out_dir: str = "out_finetune"
    # the paper's knobs
    num_pauses: int = 10          # M_ft; 0 is standard finetuning (StdFT)
    num_pauses_eval: int = -1     # M_inf; -1 means M_inf = M_ft
    where: str = "append"         # 'prepend' is the paper's ablation (with --compare: extra rows)
    filler: str = ""              # evaluate with this token (e.g. '.') instead of pauses: filler baseline
    score_choices: bool = False   # score every multiple-choice task by likelihood (CommonSenseQA too)
    # optimization: AdamW, linear warmup then cosine decay (train.lr_at)
    max_steps: int = 250
    batch_size: int = 32          # global batch, split across DDP ranks
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    max_new_tokens: int = 0       # 0: the longest training answer + 2, at most a quarter of the context
    eval_batch_size: int = 16     # rows per forward pass when scoring choices
    log_interval: int = 25
    device: str = "auto"          # auto, cpu, cuda, cuda:N (torchrun picks cuda:LOCAL_RANK)
    dtype: str = "auto"           # auto (bfloat16 autocast on a GPU that has it, else float32), float32, bfloat16
    save: bool = False            # also write the finetuned model to out_dir/ckpt.pt
    # the four configurations and the ablations (--compare)
    compare: bool = False
    std_ckpt: str = ""            # StdPT checkpoint; empty: pretrain one on the built-in corpus
    pause_ckpt: str = ""          # PausePT checkpoint; empty: pretrain one with --pretrain_pause_frac
    pretrain_pause_frac: float = 0.1
    pretrain_steps: int = 0       # 0: train.py's default
    seeds: int = 3
    minf_sweep: bool = False      # M_inf in {0, M_ft/2, M_ft, 3M_ft/2, 2M_ft} for the PauseFT models
    filler_baseline: bool = False  # StdPT_StdFT evaluated with M_ft '.' tokens instead of pauses


# -----------------------------------------------------------------------------------------------
# Token rows. The context is finite: when prompt + pauses + answer do not fit, the prompt is cut
# from the left (its end, next to the question, matters most); the pauses and the answer never are.

def fit_prompt(prompt_ids, room):
    """(the last `room` tokens of the prompt, whether anything was cut)."""
    if room < 1:
        raise ValueError(f"the pauses and the answer leave no room for the prompt in the context ({room} "
                         "positions); use fewer pauses, a shorter --max_new_tokens, or a longer context")
    return (prompt_ids[-room:], True) if len(prompt_ids) > room else (prompt_ids, False)


def delay_tokens(prompt_ids, num_pauses, pause_id, filler_id=None, where="append"):
    """(prefix, pauses left for pause.py): the filler baseline writes filler tokens where the
    pauses would go and asks pause.py for no pauses; otherwise pause.py appends them."""
    if filler_id is None:
        return prompt_ids, num_pauses
    return pause.append_pauses(prompt_ids, num_pauses, filler_id, where).tolist(), 0


def pad_rows(rows, pad_id):
    """Right-pad (x, y) rows into (B, T) tensors: x with any valid id, y with IGNORE (no loss)."""
    T = max(len(x) for x, _ in rows)
    X = torch.full((len(rows), T), pad_id, dtype=torch.long)
    Y = torch.full((len(rows), T), pause.IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        X[i, :len(x)], Y[i, :len(y)] = x, y
    return X, Y


class Context:
    """What every step needs to know about the model: tokenizer, pause id, context, devices."""

    def __init__(self, tok, block_size, vocab_size, device="cpu", rank=0, world_size=1, dtype="float32"):
        self.tok, self.block_size, self.vocab_size = tok, block_size, vocab_size
        self.device, self.rank, self.world_size = device, rank, world_size
        # bf16 autocast on GPUs: matmuls in bfloat16, weights and optimizer state in float32.
        self.autocast = lambda: (torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
                                 if dtype == "bfloat16" else nullcontext())
        self.pause_id, self.eot_id = tok.pause_id, tok.eot_id
        # Decoding stops at <|endoftext|> or at any token whose text holds a newline.
        self.newline_ids = {i for i in range(tok.eot_id) if b"\n" in tok.enc.decode_single_token_bytes(i)}

    def stop_ids(self, task):
        return {self.eot_id} | (self.newline_ids if task.stop == "newline" else set())

    def target_ids(self, ex, task):
        end = [self.eot_id] if task.stop == "eot" else self.tok.encode("\n")
        return self.tok.encode(ex["target"]) + end


def training_rows(examples, task, ctx, num_pauses, where):
    """(x, y) for every example via pause.finetune_example, and how many prompts were cut."""
    rows, cut = [], 0
    prompts = ctx.tok.encode_batch([e["prompt"] for e in examples])
    for ex, prompt_ids in zip(examples, prompts):
        target = ctx.target_ids(ex, task)
        prompt_ids, was_cut = fit_prompt(prompt_ids, ctx.block_size - num_pauses - len(target) + 1)
        cut += was_cut
        rows.append(pause.finetune_example(prompt_ids, target, num_pauses, ctx.pause_id, where, ctx.block_size))
    return rows, cut


# -----------------------------------------------------------------------------------------------
# Evaluation: multiple-choice tasks by likelihood, the others by greedy decoding. Both see the
# prompt followed by M_inf pauses (or filler tokens), exactly as in finetuning.

@torch.no_grad()
def score_choices(model, rows, ctx, batch_size):
    """Sum of the log-probabilities of each row's targets (y != IGNORE), in batches."""
    out = []
    for i in range(0, len(rows), batch_size):
        x, y = pad_rows(rows[i:i + batch_size], ctx.eot_id)
        x, y = x.to(ctx.device), y.to(ctx.device)
        with ctx.autocast():
            logits = model(x)[0]
        # Score with the distribution the decoder uses: the vocabulary's padding ids and the pause
        # (never a target) get no probability. Only the scored positions are normalized.
        scored = y != pause.IGNORE
        logits = logits[scored][:, :ctx.vocab_size].float()
        logits[:, ctx.pause_id] = float("-inf")
        picked = F.log_softmax(logits, dim=-1).gather(1, y[scored].unsqueeze(1)).squeeze(1)
        per_row = torch.zeros(x.size(0), device=picked.device).index_add_(0, scored.nonzero()[:, 0], picked)
        out += per_row.tolist()
    return out


def answer_loss(records):
    """Mean teacher-forced loss per gold-answer token (generation tasks), or None."""
    if "answer_nll" not in records[0]:
        return None
    return sum(r["answer_nll"] for r in records) / sum(r["answer_tokens"] for r in records)


def evaluate(model, examples, task, ctx, num_pauses, where="append", filler_id=None, max_new_tokens=8,
             batch_size=64, generate=None, progress=True):
    """Score every example; returns (mean score, per-example records, number of prompts cut).
    Under DDP each rank takes every world_size-th example and the records are gathered."""
    model.eval()
    mine = list(range(ctx.rank, len(examples), ctx.world_size))
    is_choice = task.metric == "acc" if generate is None else not generate
    records, cut = [], 0
    prompts = ctx.tok.encode_batch([examples[i]["prompt"] for i in mine])
    if is_choice:
        # acc_norm: the choice with the highest log-likelihood per character of its text.
        rows, owners = [], []
        for i, prompt_ids in zip(mine, prompts):
            choices = [ctx.tok.encode(c) for c in examples[i]["choices"]]
            prompt_ids, was_cut = fit_prompt(prompt_ids, ctx.block_size - num_pauses - max(map(len, choices)) + 1)
            cut += was_cut
            prefix, m = delay_tokens(prompt_ids, num_pauses, ctx.pause_id, filler_id, where)
            for c in choices:
                rows.append(pause.finetune_example(prefix, c, m, ctx.pause_id, where))
                owners.append(i)
        logp = score_choices(model, rows, ctx, batch_size)
        k = 0
        for i in mine:
            ex = examples[i]
            norm = [logp[k + j] / max(1, len(c)) for j, c in enumerate(ex["choices"])]
            k += len(norm)
            pred = max(range(len(norm)), key=norm.__getitem__)
            records.append({"index": i, "prediction": pred, "label": ex["label"], "score": float(pred == ex["label"])})
    else:
        stop = ctx.stop_ids(task)
        for i, prompt_ids in tqdm(list(zip(mine, prompts)), desc="decode", disable=not progress, leave=False):
            prompt_ids, was_cut = fit_prompt(prompt_ids, ctx.block_size - num_pauses - max_new_tokens)
            cut += was_cut
            prefix, m = delay_tokens(prompt_ids, num_pauses, ctx.pause_id, filler_id, where)
            with ctx.autocast():
                new = pause.pause_generate(model, prefix, m, ctx.pause_id, max_new_tokens, where=where, stop_ids=stop)
            prediction = ctx.tok.decode(new)
            golds = examples[i]["answers"]
            records.append({"index": i, "prediction": prediction, "answers": golds,
                            "score": score_prediction(task.metric, prediction, golds),
                            **({"f1": f1(prediction, golds), "em": exact_match(prediction, golds)}
                               if task.metric in ("em", "f1") else {})})
        # The teacher-forced loss of the gold answer, in nats per answer token: a smooth measure that
        # still separates configurations when a small model gets few answers exactly right.
        rows = []
        for i, prompt_ids in zip(mine, prompts):
            target = ctx.target_ids(examples[i], task)
            prompt_ids, _ = fit_prompt(prompt_ids, ctx.block_size - num_pauses - len(target) + 1)
            prefix, m = delay_tokens(prompt_ids, num_pauses, ctx.pause_id, filler_id, where)
            rows.append(pause.finetune_example(prefix, target, m, ctx.pause_id, where))
        for rec, logp, (_, y) in zip(records, score_choices(model, rows, ctx, batch_size), rows):
            rec["answer_nll"], rec["answer_tokens"] = -logp, int((y != pause.IGNORE).sum())
    if ctx.world_size > 1:
        gathered = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, (records, cut))
        records = sorted((r for rs, _ in gathered for r in rs), key=lambda r: r["index"])
        cut = sum(c for _, c in gathered)
    return 100.0 * sum(r["score"] for r in records) / len(records), records, cut


# -----------------------------------------------------------------------------------------------
# One finetuning run.

def load_pretrained(path, device):
    """The model, tokenizer and checkpoint dict of train.py's checkpoint; refuses one whose
    vocabulary has no pause token (the four configurations share one vocabulary)."""
    if not os.path.isfile(path):
        raise SystemExit(f"checkpoint {path!r} not found: pretrain one with `python train.py --out_dir DIR` "
                         "(add --pause_frac 0.1 for PausePT) and pass --ckpt DIR/ckpt.pt")
    model, tok, ckpt = load_checkpoint(path, device)
    if ckpt.get("pause_id") is None or tok.pause_id >= model.config.vocab_size:
        raise ValueError(f"{path}: the model's vocabulary ({model.config.vocab_size} ids) has no pause token "
                         f"(the {tok.name} tokenizer's <|pause|> is id {tok.pause_id}); finetune.py needs a "
                         "checkpoint written by train.py, whose vocabulary includes <|pause|>")
    return model, tok, ckpt


def config_name(pause_frac, num_pauses):
    return ("PausePT" if pause_frac > 0 else "StdPT") + ("_PauseFT" if num_pauses > 0 else "_StdFT")



def finetune(cfg, env=None, data=None, progress=True):
    """Finetune cfg.ckpt on cfg.task with M_ft = cfg.num_pauses and evaluate it with M_inf pauses.
    env: (rank, world_size, device) from train.setup_ddp(); data: (train, eval) examples already
    loaded. Returns (model, ctx, results); rank 0 writes out_dir/results.json."""
    rank, world_size, device = env or (0, 1, "cuda" if torch.cuda.is_available() and cfg.device == "auto" else
                                       "cpu" if cfg.device == "auto" else cfg.device)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype must be auto, float32 or bfloat16, got {cfg.dtype!r}")
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch_size {cfg.batch_size} must be a multiple of the {world_size} DDP ranks")
    if cfg.where not in ("append", "prepend"):
        raise ValueError(f"--where must be 'append' or 'prepend', got {cfg.where!r}")
    task = get_task(cfg.task)
    m_ft = cfg.num_pauses
    m_inf = m_ft if cfg.num_pauses_eval < 0 else cfg.num_pauses_eval
    torch.manual_seed(cfg.seed)
    model, tok, ckpt = load_pretrained(cfg.ckpt, device)
    ctx = Context(tok, model.config.block_size, model.config.vocab_size, device, rank, world_size, dtype)
    filler_id = None
    if cfg.filler:
        ids = tok.encode(cfg.filler)
        if len(ids) != 1:
            raise ValueError(f"--filler {cfg.filler!r} must be one token of the {tok.name} tokenizer, it is {len(ids)}")
        filler_id = ids[0]
    if data is None:
        eval_path = cfg.eval_data or cfg.data
        data = (load_task(cfg.task, cfg.data, "train", cfg.n_train, seed=0),
                load_task(cfg.task, eval_path, "test", cfg.n_eval, seed=0))
    train_examples, eval_examples = data
    rows, cut_train = training_rows(train_examples, task, ctx, m_ft, cfg.where)
    # Generation needs room for the answer: by default the longest training answer and two spare tokens.
    max_new = cfg.max_new_tokens or min(max(len(ctx.target_ids(e, task)) for e in train_examples) + 2,
                                        ctx.block_size // 4)
    model_ddp = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model_ddp = DDP(model, device_ids=[device] if torch.device(device).type == "cuda" else None)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, device_type=torch.device(device).type)
    name = config_name(ckpt.get("pause_frac", 0.0), m_ft)
    master = rank == 0
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        log = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "w")
        print(f"{name} on {cfg.task}: {len(rows)} training rows, M_ft={m_ft}, M_inf={m_inf}, "
              f"{cfg.max_steps} steps of {cfg.batch_size}" + (f"; {cut_train} prompts cut from the left to fit "
                                                                f"the context of {ctx.block_size}" if cut_train else ""))

    # Every rank draws the same global batch from the same generator and keeps its share; the loss
    # is the sum over the global batch's answer tokens divided by their number, so DDP's gradient
    # average equals one process on the whole batch.
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos = torch.randperm(len(rows), generator=gen), 0
    model.train()
    t0, loss_acc, steps_acc = time.time(), 0.0, 0
    for step in tqdm(range(cfg.max_steps), desc=name, disable=not (master and progress)):
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(rows), generator=gen), 0
        batch = [rows[i] for i in order[pos:pos + cfg.batch_size].tolist()]
        pos += cfg.batch_size
        n_tokens = sum(int((y != pause.IGNORE).sum()) for _, y in batch)
        x, y = pad_rows(batch[rank::world_size], ctx.eot_id)
        x, y = x.to(device), y.to(device)
        lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with ctx.autocast():
            logits, _ = model_ddp(x)
        loss_sum = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1),
                                   ignore_index=pause.IGNORE, reduction="sum")
        (loss_sum * world_size / n_tokens).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_acc, steps_acc = loss_acc + loss_sum.item() / n_tokens, steps_acc + 1  # this rank's share
        if step % cfg.log_interval == 0 or step == cfg.max_steps - 1:
            if world_size > 1:  # the shares of all ranks add up to the global batch's loss
                shared = torch.tensor([loss_acc], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(shared)
                loss_acc = shared.item()
            if master:
                log.write(json.dumps({"step": step, "loss": loss_acc / steps_acc, "lr": lr,
                                      "time_s": round(time.time() - t0, 2)}) + "\n")
                log.flush()
            loss_acc, steps_acc = 0.0, 0

    value, records, cut_eval = evaluate(model, eval_examples, task, ctx, m_inf, cfg.where, filler_id,
                                        max_new, cfg.eval_batch_size, generate=False if cfg.score_choices and
                                        "choices" in eval_examples[0] else None, progress=master and progress)
    results = {"task": cfg.task, "config": name + (" (prepend)" if cfg.where == "prepend" else "")
               + (f" + filler {cfg.filler!r}" if cfg.filler else ""),
               "num_pauses": m_ft, "num_pauses_eval": m_inf, "where": cfg.where, "filler": cfg.filler,
               "metric": "acc" if "label" in records[0] else task.metric, "value": value,
               "answer_loss": answer_loss(records),
               "num_examples": len(records), "seed": cfg.seed, "pause_frac": ckpt.get("pause_frac", 0.0),
               "ckpt": cfg.ckpt, "train_examples": len(rows), "steps": cfg.max_steps,
               "truncated_train": cut_train, "truncated_eval": cut_eval, "max_new_tokens": max_new,
               "finetune_time_s": round(time.time() - t0, 1)}
    for extra in ("em", "f1"):
        if extra in records[0]:
            results[extra] = 100.0 * sum(r[extra] for r in records) / len(records)
    if master:
        log.write(json.dumps({"eval": results}) + "\n")
        log.close()
        with open(os.path.join(cfg.out_dir, "predictions.jsonl"), "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        write_json(results, os.path.join(cfg.out_dir, "results.json"))
        if cfg.save:
            save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                             "tokenizer": tok.name, "pause_id": tok.pause_id,
                             "pause_frac": ckpt.get("pause_frac", 0.0), "finetune_config": asdict(cfg)},
                            os.path.join(cfg.out_dir, "ckpt.pt"))
        if cut_eval:
            print(f"note: {cut_eval} of {len(records)} evaluation prompts were cut from the left to fit the context")
    return model, ctx, results


# -----------------------------------------------------------------------------------------------
# The four configurations, over several seeds, with the paper's ablations.

def pretrain(cfg, pause_frac):
    """A checkpoint pretrained on the built-in corpus by train.py (reused if already there)."""
    out = os.path.join(cfg.out_dir, "pretrain_pause" if pause_frac > 0 else "pretrain_std")
    path = os.path.join(out, "ckpt.pt")
    if os.path.isfile(path):
        ckpt = load_checkpoint(path, "cpu")[2]
        if ckpt.get("pause_frac", 0.0) == pause_frac and (not cfg.pretrain_steps or ckpt["step"] >= cfg.pretrain_steps):
            print(f"reusing {path} (pause_frac {pause_frac})")
            return path
    overrides = {"max_steps": cfg.pretrain_steps} if cfg.pretrain_steps else {}
    t0 = time.time()
    path = train(TrainConfig(out_dir=out, pause_frac=pause_frac, device=cfg.device, **overrides))
    print(f"pretrained {path} (pause_frac {pause_frac}) in {time.time() - t0:.0f} s")
    return path


def summarize(runs):
    """Group runs by configuration and evaluation setting: mean and std over seeds."""
    groups = {}
    for r in runs:
        groups.setdefault((r["config"], r["num_pauses"], r["num_pauses_eval"]), []).append(r)
    rows = []
    for (config, m_ft, m_inf), group in groups.items():
        values = [r["value"] for r in group]
        row = {"config": config, "num_pauses": m_ft, "num_pauses_eval": m_inf, "values": values,
               "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        if group[0].get("answer_loss") is not None:
            losses = [r["answer_loss"] for r in group]
            row.update(loss_mean=statistics.mean(losses), loss_std=statistics.stdev(losses) if len(losses) > 1 else 0.0)
        rows.append(row)
    return rows


def markdown_table(rows, task, metric):
    has_loss = "loss_mean" in rows[0]
    lines = [f"| configuration | M_ft | M_inf | {task} {metric} % (mean ± std) | per seed |"
             + (" answer loss, nats/token |" if has_loss else ""),
             "| --- | --- | --- | --- | --- |" + (" --- |" if has_loss else "")]
    for r in rows:
        lines.append(f"| {r['config']} | {r['num_pauses']} | {r['num_pauses_eval']} | {r['mean']:.1f} ± {r['std']:.1f} "
                     f"| {', '.join(f'{v:.1f}' for v in r['values'])} |"
                     + (f" {r['loss_mean']:.3f} ± {r['loss_std']:.3f} |" if has_loss else ""))
    return "\n".join(lines)


def compare(cfg, env=None):
    """StdPT_StdFT, StdPT_PauseFT, PausePT_StdFT and PausePT_PauseFT on cfg.task over cfg.seeds seeds,
    plus the ablations asked for. Returns {'rows', 'runs', 'table', ...}; writes out_dir/compare.json."""
    if cfg.num_pauses < 1:
        raise ValueError("--compare needs --num_pauses >= 1 (M_ft of the PauseFT configurations)")
    os.makedirs(cfg.out_dir, exist_ok=True)
    t0 = time.time()
    ckpts = {"StdPT": cfg.std_ckpt or pretrain(cfg, 0.0), "PausePT": cfg.pause_ckpt or pretrain(cfg, cfg.pretrain_pause_frac)}
    data = (load_task(cfg.task, cfg.data, "train", cfg.n_train, seed=0),
            load_task(cfg.task, cfg.eval_data or cfg.data, "test", cfg.n_eval, seed=0))
    m = cfg.num_pauses
    plan = [("StdPT", 0, "append"), ("StdPT", m, "append"), ("PausePT", 0, "append"), ("PausePT", m, "append")]
    if cfg.where == "prepend":  # the paper's ablation: pauses before the prompt, beside the appended rows
        plan += [("StdPT", m, "prepend"), ("PausePT", m, "prepend")]
    runs = []
    for s in range(cfg.seeds):
        for pt, m_ft, where in plan:
            run_cfg = replace(cfg, ckpt=ckpts[pt], num_pauses=m_ft, num_pauses_eval=-1, where=where, filler="",
                              seed=cfg.seed + s, compare=False,
                              out_dir=os.path.join(cfg.out_dir, f"{pt}_{'PauseFT' if m_ft else 'StdFT'}_{where}_seed{cfg.seed + s}"))
            model, ctx, res = finetune(run_cfg, env, data, progress=False)
            runs.append(res)
            print(f"seed {cfg.seed + s}  {res['config']:28s} M_ft={m_ft:<3d} M_inf={m_ft:<3d} {res['metric']} {res['value']:.1f}"
                  f"  answer loss {res['answer_loss'] or float('nan'):.3f}   ({time.time() - t0:.0f} s)")
            task, max_new = get_task(cfg.task), res["max_new_tokens"]
            extra = []  # evaluation-only ablations of this finetuned model
            if cfg.minf_sweep and m_ft > 0 and where == "append":
                extra += [(m_inf, None) for m_inf in sorted({0, m // 2, (3 * m) // 2, 2 * m})]
            if cfg.filler_baseline and pt == "StdPT" and m_ft == 0:
                extra.append((m, ctx.tok.encode(".")[0]))
            for m_inf, filler_id in extra:
                value, records, _ = evaluate(model, data[1], task, ctx, m_inf, where, filler_id, max_new,
                                             cfg.eval_batch_size, progress=False,
                                             generate=False if cfg.score_choices and "choices" in data[1][0] else None)
                runs.append({**res, "num_pauses_eval": m_inf, "value": value, "answer_loss": answer_loss(records),
                             "filler": "." if filler_id else "",
                             "config": res["config"] + (" + filler '.'" if filler_id else "")})
                print(f"seed {cfg.seed + s}  {runs[-1]['config']:28s} M_ft={m_ft:<3d} M_inf={m_inf:<3d} "
                      f"{res['metric']} {value:.1f}")
    # The paper's order (StdPT_StdFT, StdPT_PauseFT, PausePT_StdFT, PausePT_PauseFT), each ablation row
    # after the model it evaluates, M_inf ascending.
    first = {}
    for r in runs:
        first.setdefault(r["config"], len(first))
    rows = sorted(summarize(runs), key=lambda r: (first[r["config"]], r["num_pauses_eval"]))
    table = markdown_table(rows, cfg.task, runs[0]["metric"])
    result = {"task": cfg.task, "seeds": cfg.seeds, "ckpts": ckpts, "rows": rows, "runs": runs, "table": table,
              "wall_time_s": round(time.time() - t0, 1), "config": asdict(cfg)}
    if env is None or env[0] == 0:
        write_json(result, os.path.join(cfg.out_dir, "compare.json"))
        print(table)
        print(f"wall time {result['wall_time_s']:.0f} s; written to {os.path.join(cfg.out_dir, 'compare.json')}")
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(FinetuneConfig):
        if f.type is bool or f.type == "bool":
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(f"--{f.name}", type=kind, default=f.default)
    cfg = FinetuneConfig(**vars(parser.parse_args(argv)))
    if cfg.num_pauses < 0 or cfg.num_pauses_eval < -1:
        parser.error("--num_pauses must be >= 0 and --num_pauses_eval >= 0 (or -1 for M_inf = M_ft)")
    if cfg.where not in ("append", "prepend"):
        parser.error(f"--where must be append or prepend, got {cfg.where!r}")
    if cfg.seeds < 1 or cfg.batch_size < 1 or cfg.max_steps < 0:
        parser.error("--seeds and --batch_size must be >= 1 and --max_steps >= 0")
    if not cfg.compare and not cfg.ckpt:
        parser.error("--ckpt is required (a train.py checkpoint), or use --compare")
    return cfg


def main(argv=None):
    cfg = parse_args(argv)
    get_task(cfg.task)  # an unknown task fails before any work
    rank, _, world_size, device = setup_ddp(cfg.device)
    try:
        if cfg.compare:
            compare(cfg, (rank, world_size, device))
        else:
            results = finetune(cfg, (rank, world_size, device))[2]
            if rank == 0:
                print(json.dumps(results, indent=2))
    finally:
        cleanup_ddp()


if __name__ == "__main__":
    main()
