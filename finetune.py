"""
Pause-finetuning and pause-inference on a downstream task (paper Sec. 3.2-3.3):

    python finetune.py --ckpt out/ckpt.pt --task world:add --num_pauses 10
    python finetune.py --ckpt out/ckpt.pt --task squad --data data/
    python finetune.py --init_from gpt2 --task gsm8k --data data/
    python finetune.py --ckpt ft/ckpt.pt --max_steps 0 --task squad --eval_data F
    torchrun --standalone --nproc_per_node=8 finetune.py --ckpt ... --task ...

The pretrained model (train.py's checkpoint, StdPT or PausePT by its
pause_frac, or GPT-2, a StdPT model) is finetuned with M_ft = --num_pauses
pauses after every prompt (M_ft = 0: StdFT), then evaluated with
M_inf = --num_pauses_eval pauses as the task's official script scores it.
--max_steps 0 evaluates a model as it is and needs no training file; the
configuration's name (StdPT_PauseFT ...) then comes from what the model
carries. Writes out_dir/metrics.jsonl, predictions.jsonl and results.json
(scores in %). tools/experiment.py runs the paper's four configurations,
StdPT_StdFT, StdPT_PauseFT, PausePT_StdFT and PausePT_PauseFT.
"""
import json
import math
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import pause
import tasks
from tasks.evaluate import (answer_rows, choice_inputs, gather, generate_answers,
                            generate_inputs, pad_rows, score_choices)
from tools import gpt2
from tools.checkpoint import load_pretrained, save_checkpoint
from tools.common import (UserError, append_jsonl, atomic_write, check_ranges, cleanup_ddp,
                          json_safe, lr_at, own_run_dir, parse_config, require,
                          require_writable_dir, resolve_device, resolve_dtype, setup_ddp,
                          write_json)

M_FT = "--num_pauses (M_ft)"
# What a run writes, results.json last: it marks a complete run.
OUTPUTS = ("metrics.jsonl", "predictions.jsonl", "ckpt.pt", "results.json")
UNFINISHED = ".unfinished"  # where a run writes until it is complete
BUILTIN_MAX = 100_000  # more than the built-in tasks' distinct examples


@dataclass
class FinetuneConfig:
    # the pretrained model: exactly one of --ckpt and --init_from
    ckpt: str = ""  # a checkpoint of train.py or finetune.py
    init_from: str = ""  # Hugging Face weights: gpt2 ... gpt2-xl, or a DIR
    # the task
    task: str = "world:chain"  # one of the nine real tasks, or a built-in one
    data: str = ""  # real tasks: a DIR (prepare's) or the training FILE
    eval_data: str = ""  # the evaluation FILE; needed when --data is a file
    n_train: int = -1  # training examples; -1: the whole split, or 4000 made
    n_eval: int = -1  # evaluation examples; -1: the whole split, or 200 made
    data_seed: int = 0  # which random subset a positive n draws
    # the paper's knobs
    num_pauses: int = 10  # M_ft, pauses after each prompt in finetuning; 0 is StdFT
    num_pauses_eval: int = -1  # M_inf; -1: M_ft (with --max_steps 0: the model's)
    where: str = "append"  # pauses after the prompt, or before it (an ablation)
    filler: str = ""  # evaluate with M_inf copies of this token (e.g. '.')
    score_choices: bool = False  # commonsense_qa: score the letters, not decode
    # optimization: AdamW, linear warmup then cosine decay
    max_steps: int = 250  # optimizer steps; 0 evaluates the model as it is
    batch_size: int = 32  # examples per step, over all DDP ranks together
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 30  # steps of linear warmup
    weight_decay: float = 0.1  # AdamW's, on the matrices only
    grad_clip: float = 1.0  # clip the gradient's norm to this; 0: no clipping
    seed: int = 0  # the order of the training examples
    # evaluation
    max_new_tokens: int = 0  # 0: longest answer + 2 (training's, else eval's), <= T/4
    eval_batch_size: int = 16  # prompts decoded (or rows scored) together
    # system and output
    log_interval: int = 25  # steps between two lines of out_dir/metrics.jsonl
    device: str = "auto"  # auto, cpu, cuda, cuda:N (torchrun: cuda:LOCAL_RANK)
    dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, else float32
    out_dir: str = "out_finetune"  # where the run's files go
    save: bool = False  # also write the finetuned model to out_dir/ckpt.pt
    overwrite: bool = False  # replace an earlier run's files in out_dir

    def check(self):
        """Every flag and file, before any work; a refusal names the flag."""
        check_ranges(self, {
            ">= 1": "batch_size eval_batch_size log_interval",
            ">= 0": "seed data_seed max_steps warmup_steps num_pauses "
                    "max_new_tokens min_lr grad_clip weight_decay",
            "> 0": "lr"})
        require(self.min_lr <= self.lr, f"--min_lr {self.min_lr} is above --lr "
                f"{self.lr}: the cosine decay would climb")
        require(self.num_pauses_eval >= -1, "--num_pauses_eval is -1 (M_inf = M_ft) "
                f"or >= 0, got {self.num_pauses_eval}")
        builtin = self.task in tasks.BUILTIN
        for flag in ("n_train", "n_eval"):
            n = getattr(self, flag)
            require(n == -1 or n >= 1, f"--{flag} is -1 (the task's default) or "
                    f">= 1, got {n}")
            require(not builtin or n <= BUILTIN_MAX, f"--{flag} {n}: a built-in "
                    f"task makes at most {BUILTIN_MAX} examples")
        require(bool(self.ckpt) != bool(self.init_from), "give exactly one pretrained "
                "model: --ckpt (a train.py checkpoint) or --init_from "
                f"({', '.join(gpt2.NAMES)} or a DIR)")
        require(not self.score_choices or self.task == "commonsense_qa",
                "--score_choices is for commonsense_qa (piqa and hellaswag are "
                "always scored by likelihood)")
        require(not (self.save and self.max_steps == 0), "--save with --max_steps 0 "
                "would save the model unchanged; it is the one given already")
        tasks.check_data(self.task, self.data, self.eval_data, self.max_steps > 0)
        resolve_device(self.device)  # a GPU on a machine without one is refused
        require_writable_dir(self.out_dir, "--out_dir")
        mine = os.path.join(self.out_dir, "ckpt.pt")
        require(not (self.save and same_file(self.ckpt, mine)), f"--save would "
                f"replace --ckpt {self.ckpt}, this run's input; give another --out_dir")
        check_earlier_run(self)


# ---------------------------------------------------------------------------------------------
# The output directory. A run writes into out_dir/.unfinished/ and moves its
# files into out_dir only once all of them are complete: a run that fails or
# is killed leaves an earlier run's files as they were, never a mix of two.

def same_file(a, b):
    both = bool(a) and os.path.exists(a) and os.path.exists(b)
    return both and os.path.samefile(a, b)


def check_earlier_run(cfg):
    """An earlier run's files need --overwrite (--ckpt, the input, is none)."""
    paths = {name: os.path.join(cfg.out_dir, name) for name in OUTPUTS}
    held = [name for name, path in paths.items()
            if os.path.exists(path) and not same_file(cfg.ckpt, path)]
    require(not held or cfg.overwrite, f"--out_dir {cfg.out_dir} already holds "
            f"{' and '.join(held)} of an earlier run; give another --out_dir, or "
            "--overwrite to replace them once this run is complete")


def start_unfinished(out_dir):
    """A fresh out_dir/.unfinished/ (deleting what a killed or failed run left)."""
    path = os.path.join(out_dir, UNFINISHED)
    if os.path.exists(path):
        shutil.rmtree(path)
        print(f"note: removed {path}, left by a run that did not finish")
    os.makedirs(path)
    return path


def finish_run(cfg, staged):
    """Move this run's complete files into out_dir, results.json last. An
    earlier run's ckpt.pt goes, unless it is --ckpt, this run's input."""
    final = {name: os.path.join(cfg.out_dir, name) for name in OUTPUTS}
    if os.path.exists(final["results.json"]):  # from now on: not a complete run
        os.remove(final["results.json"])
    for name, path in final.items():
        new = os.path.join(staged, name)
        if os.path.exists(new):
            os.replace(new, path)
        elif same_file(cfg.ckpt, path):
            print(f"note: kept {path}, this run's --ckpt")
        elif os.path.exists(path):
            os.remove(path)
            print(f"removed {path}, the earlier run's (--overwrite without --save)")
    os.rmdir(staged)


# ---------------------------------------------------------------------------------------------
# One finetuning run.

def training_rows(examples, task, tok, block_size, num_pauses, where):
    """The (x, y) row of every example with M_ft pauses, and how many prompts
    were cut to fit."""
    rows, cuts = [], 0
    prompts = tok.encode_batch([e["prompt"] for e in examples])
    for ex, prompt in zip(examples, prompts):
        answer = tasks.answer_ids(tok, task, ex["target"])
        (row,), cut = answer_rows(prompt, [answer], num_pauses, tok.pause_id, where,
                                  block_size, M_FT)
        rows.append(row)
        cuts += cut
    return rows, cuts


def load_examples(cfg, split):
    """(examples, whether they are the whole split). -1 is the task's default:
    the whole split of a real task; 4000 training or 200 evaluation examples
    made for a built-in one."""
    n = cfg.n_train if split == "train" else cfg.n_eval
    if cfg.task in tasks.BUILTIN and n == -1:
        n = {"train": 4000, "test": 200}[split]
    path = cfg.eval_data if split == "test" and cfg.eval_data else cfg.data
    try:
        examples = tasks.load_task(cfg.task, path, split, n, seed=cfg.data_seed)
    except ValueError as e:
        raise UserError(f"--task {cfg.task}: {e}") from None
    if cfg.score_choices:
        examples = tasks.as_letters(examples)
    return examples, n == -1


def config_name(pause_frac, m_ft, cfg):
    """The paper's name of the configuration (M_ft None: not finetuned), with the
    ablations' marks."""
    name = "PausePT" if pause_frac > 0 else "StdPT"
    if m_ft is not None:  # None: a model that no finetuning has touched
        name += "_PauseFT" if m_ft > 0 else "_StdFT"
    name += " (prepend)" if cfg.where == "prepend" else ""
    return name + (f" + filler {cfg.filler!r}" if cfg.filler else "")


def finetune(cfg, env=None, progress=True):
    """Finetune the pretrained model on cfg.task with M_ft = cfg.num_pauses,
    then evaluate it with M_inf pauses; cfg.check() has passed. env: (rank,
    world_size, device) from setup_ddp(). Returns (model, results); rank 0
    writes them to out_dir."""
    rank, world_size, device = env or (0, 1, resolve_device(cfg.device))
    require(cfg.batch_size % world_size == 0, f"--batch_size {cfg.batch_size} "
            f"must be a multiple of the {world_size} DDP ranks")
    with ExitStack() as run_dir:  # rank 0 holds out_dir while it writes there
        model, results = run(cfg, rank, world_size, device, run_dir, progress)
    if world_size > 1:
        dist.barrier()  # every rank returns once rank 0's files are in place
    return model, results


def run(cfg, rank, world_size, device, run_dir, progress):
    """The run itself. Rank 0 enters out_dir's lock into run_dir (an
    ExitStack) once the settings have passed every check against the model
    and the data: a refusal writes nothing."""
    master = rank == 0
    _, autocast = resolve_dtype(cfg.dtype, device)
    task = tasks.get_task(cfg.task)
    if cfg.score_choices:
        task = tasks.CSQA_LETTERS
    torch.manual_seed(cfg.seed)
    model, tok, carried = load_pretrained(cfg.ckpt, cfg.init_from, device)
    pause_frac = carried["pause_frac"]
    block_size = model.config.block_size
    filler = tok.encode(cfg.filler)
    require(not cfg.filler or len(filler) == 1, f"--filler {cfg.filler!r} must be one "
            f"token of the {tok.name} tokenizer; it is {len(filler)}")
    delay_id = filler[0] if cfg.filler else tok.pause_id  # pauses, or filler tokens
    trains = cfg.max_steps > 0
    train_examples = load_examples(cfg, "train")[0] if trains else []
    eval_examples, whole_split = load_examples(cfg, "test")
    # A copy of the training data is refused; the public splits share a few examples.
    shared = tasks.shared_examples(train_examples, eval_examples)
    of_eval = f"{shared} of the {len(eval_examples)} evaluation examples"
    require(shared * 100 <= len(eval_examples), f"--task {cfg.task}: {of_eval} are "
            "training examples too; evaluate on another split (--eval_data)")
    if shared and master:
        print(f"note: {of_eval} are word for word training examples too")
    # M_ft: this run's; for an evaluation-only run, the model's own (None: not finetuned)
    m_ft = cfg.num_pauses if trains else carried["num_pauses"]
    m_inf = cfg.num_pauses_eval
    if m_inf < 0:
        m_inf = cfg.num_pauses if m_ft is None else m_ft
    rows, cut_train = training_rows(train_examples, task, tok, block_size, cfg.num_pauses,
                                    cfg.where)
    # Decoding needs room for the answer: the longest training answer (or, without
    # training, evaluation answer) + 2 tokens. LAMBADA decodes as many as its target has.
    answers = [tasks.answer_ids(tok, task, e["target"]) for e in train_examples or
               eval_examples]
    max_new = cfg.max_new_tokens or min(block_size // 4, 2 + max(map(len, answers)))
    if task.stop == "length":
        max_new = max(len(tok.encode(e["target"])) for e in eval_examples)
    mine = range(rank, len(eval_examples), world_size)  # this rank's share
    my_examples = [eval_examples[i] for i in mine]
    if task.kind == "choice":
        inputs = choice_inputs(my_examples, tok, block_size, m_inf, delay_id, cfg.where)
    else:
        inputs = generate_inputs(my_examples, task, tok, block_size, m_inf, delay_id,
                                 cfg.where, max_new, bool(cfg.filler))
    name = config_name(pause_frac, m_ft, cfg)
    log_path = staged = None
    if master:
        run_dir.enter_context(own_run_dir(cfg.out_dir))  # one run at a time
        check_earlier_run(cfg)  # again: another run may have ended since the door
        staged = start_unfinished(cfg.out_dir)
        log_path = os.path.join(staged, "metrics.jsonl")
        cut = f"; {cut_train} prompts cut from the left to fit the context"
        cut = cut if cut_train else ""
        print(f"{name} on {cfg.task}: {len(rows)} training rows, M_ft={m_ft}, "
              f"M_inf={m_inf}, {cfg.max_steps} steps of {cfg.batch_size}{cut}")
    t0 = time.time()
    model = train_steps(cfg, model, rows, rank, world_size, device, autocast, tok,
                        log_path, name, progress)

    # ---- pause-inference, scored by the task's official metrics (means, in %)
    model.eval()
    m_decode = 0 if cfg.filler else m_inf  # the filler tokens are in the prefix already
    if task.kind == "choice":
        records = score_choices(model, tok, my_examples, inputs, cfg.eval_batch_size,
                                autocast)
    else:
        records = generate_answers(model, tok, task, my_examples, inputs, m_decode,
                                   cfg.where, cfg.eval_batch_size, autocast,
                                   master and progress)
    records = gather(records, mine, world_size)
    metrics = {k: 100.0 * sum(r["metrics"][k] for r in records) / len(records)
               for k in records[0]["metrics"]}
    loss = None
    if task.kind == "generate":
        nll = sum(r["answer_nll"] for r in records)
        loss = nll / sum(r["answer_tokens"] for r in records)
    # the configuration, its scores, the examples, the model, the finetuning
    results = dict(task=cfg.task, config=name, num_pauses=m_ft, num_pauses_eval=m_inf,
                   where=cfg.where, filler=cfg.filler)
    results.update(metric=task.metric, value=metrics[task.metric], metrics=metrics,
                   source=task.source, answer_loss=loss)
    results.update(num_examples=len(records), whole_split=whole_split, seed=cfg.seed,
                   data_seed=cfg.data_seed)
    results.update(pause_frac=pause_frac, ckpt=cfg.ckpt, init_from=cfg.init_from)
    results.update(train_examples=len(rows), steps=cfg.max_steps,
                   truncated_train=cut_train,
                   truncated_eval=sum(r["cut"] for r in records),
                   eval_in_train=shared, max_new_tokens=max_new,
                   finetune_time_s=round(time.time() - t0, 1))
    if master:
        write_results(cfg, staged, results, records, model, tok)
        finish_run(cfg, staged)
    return model, results


def train_steps(cfg, model, rows, rank, world_size, device, autocast, tok, log_path,
                name, progress):
    """Pause-finetuning: cfg.max_steps AdamW steps on the loss of the answer tokens.
    Returns the model (without its DDP wrapper)."""
    raw_model = model
    device_type = torch.device(device).type
    if world_size > 1:
        ids = [device] if device_type == "cuda" else None
        model = DDP(model, device_ids=ids)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.lr,
                                               device_type=device_type)
    # Every rank draws the same global batch from the same generator and keeps its share;
    # the loss is the sum over the global batch's answer tokens divided by their number,
    # so DDP's gradient average equals one process on the whole batch.
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(rows), generator=gen)
    pos = 0
    model.train()
    t0 = time.time()
    steps_acc = 0
    loss_acc = torch.zeros(1, dtype=torch.float64, device=device)  # since the last log
    bar = not (log_path and progress)
    for step in tqdm(range(cfg.max_steps), desc=name, disable=bar):
        # an epoch is one pass over the rows in a random order; then a fresh order
        if pos + cfg.batch_size > len(order):
            order = torch.randperm(len(rows), generator=gen)
            pos = 0
        batch = [rows[i] for i in order[pos:pos + cfg.batch_size].tolist()]
        pos += cfg.batch_size
        n_tokens = sum(int((y != pause.IGNORE).sum()) for _, y in batch)
        x, y = pad_rows(batch[rank::world_size], tok.eot_id)
        x, y = x.to(device), y.to(device)
        lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits, _ = model(x)
        # only the answer is a target: y is IGNORE on the prompt and pauses (Sec. 3.2)
        loss_sum = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1),
                                   ignore_index=pause.IGNORE, reduction="sum")
        # DDP divides by world_size: undone here
        (loss_sum * world_size / n_tokens).backward()
        # The norm is taken even without clipping (max_norm inf scales by 1): after DDP's
        # all-reduce it is the same on every rank, so all of them stop at the same step.
        max_norm = cfg.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
        loss = loss_sum.item() / n_tokens  # this rank's share of the batch's loss
        require(math.isfinite(loss + norm.item()), f"step {step}: the loss ({loss:.4g}) "
                "or its gradient is not finite; stopped before the update, nothing "
                "saved. The likely cause is a learning rate too high for this model: "
                f"lower --lr {cfg.lr} (the log so far: {log_path})")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_acc += loss
        steps_acc += 1
        if step % cfg.log_interval == 0 or step == cfg.max_steps - 1:
            if world_size > 1:  # the shares of all ranks add up to the batch's loss
                dist.all_reduce(loss_acc)
            if log_path:
                row = {"step": step, "loss": loss_acc.item() / steps_acc, "lr": lr,
                       "time_s": round(time.time() - t0, 2)}
                append_jsonl(row, log_path)
            loss_acc = torch.zeros_like(loss_acc)
            steps_acc = 0
    return raw_model


def write_results(cfg, staged, r, records, model, tok):
    """Into the staged directory: the eval line of metrics.jsonl, predictions.jsonl,
    results.json (r), and ckpt.pt with --save."""
    append_jsonl({"eval": r}, os.path.join(staged, "metrics.jsonl"))
    lines = [json.dumps(json_safe(rec), ensure_ascii=False) + "\n" for rec in records]
    atomic_write(os.path.join(staged, "predictions.jsonl"), lambda f: f.writelines(lines),
                 mode="w")
    if cfg.save:
        save_checkpoint({"model": model.state_dict(),
                         "model_config": asdict(model.config),
                         "tokenizer": tok.name,
                         "pause_id": tok.pause_id,
                         "pause_frac": r["pause_frac"],
                         "finetune_config": asdict(cfg)},
                        os.path.join(staged, "ckpt.pt"))
    write_json(r, os.path.join(staged, "results.json"))
    subset = f"a random subset, --data_seed {cfg.data_seed}"
    subset = "generated" if cfg.task in tasks.BUILTIN else subset
    subset = "the whole split" if r["whole_split"] else subset
    others = "".join(f", {k} {v:.1f}%" for k, v in r["metrics"].items()
                     if k != r["metric"])
    cut = r["truncated_eval"]
    cut = f"; {cut} of them cut from the left to fit" if cut else ""
    print(f"{r['config']} on {cfg.task}: {r['metric']} {r['value']:.1f}%{others} on "
          f"{r['num_examples']} examples ({subset}{cut}), scored as {r['source']}; "
          f"written to {os.path.join(cfg.out_dir, 'results.json')}")


CHOICES = {"task": [*tasks.TASKS, *tasks.BUILTIN], "where": ["append", "prepend"],
           "dtype": ["auto", "float32", "bfloat16"]}


def main(argv=None):
    cfg = parse_config(FinetuneConfig, __doc__, argv, CHOICES)  # before any DDP setup
    rank, _, world_size, device = setup_ddp(cfg.device)
    try:
        finetune(cfg, (rank, world_size, device))
    except UserError as e:  # a flag or file refused: one line that names it
        raise SystemExit(f"finetune.py: error: {e}")
    finally:
        cleanup_ddp()


if __name__ == "__main__":
    main()
