"""
Pretraining, standard (StdPT) or with pauses (PausePT), from a laptop CPU to a cluster:

    python train.py                        # built-in corpus, tiny model, CPU, about 2 minutes
    python train.py --pause_frac 0.1       # the same with pause-pretraining (M_pt = 10% of T)
    python train.py --init_from gpt2 --pause_frac 0.1 --data DIR    # continue GPT-2 with pauses
    torchrun --standalone --nproc_per_node 8 train.py --preset 1b --data c4 --pause_frac 0.1 ...

With --pause_frac > 0 every pretraining sequence gets M_pt = pause_frac x block_size <pause>
tokens at random places (paper Sec. 3.1, done by data.PretrainLoader through pause.py), and the
loss skips the targets that are pauses. Everything else is ordinary nanoGPT-style training: AdamW,
linear warmup and cosine decay, gradient accumulation, DDP, bf16 autocast, and checkpoints that
are written atomically and resume exactly.
"""
import glob
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import PretrainLoader, builtin_tokens, data_meta, get_tokenizer, to_device
from model import GPT, GPTConfig, PRESETS, config_from_preset
from tools import gpt2
from tools.checkpoint import read_checkpoint, save_checkpoint
from tools.common import (UserError, append_jsonl, atomic_write, check_ranges, cleanup_ddp,
                          config_parser, lr_at, peak_flops_of, read_jsonl, resolve_device,
                          resolve_dtype, setup_ddp)


@dataclass
class TrainConfig:
    # the method
    pause_frac: float = 0.0        # M_pt / block_size; 0 = standard pretraining, the paper uses 0.1
    # model
    preset: str = "tiny"           # model shape, which the next four flags override in part
    block_size: int = 0            # context T in tokens; 0 = the preset's (GPT-2's: 1024)
    n_layer: int = 0               # transformer blocks; 0 = the preset's
    n_head: int = 0                # attention heads, a divisor of n_embd; 0 = the preset's
    n_embd: int = 0                # width d_model; 0 = the preset's
    dropout: float = 0.0           # dropout probability; 0 = none, usual in pretraining
    init_from: str = ""            # GPT-2 weights and shape: gpt2, gpt2-medium, -large, -xl or DIR
    # data
    data: str = ""                 # a directory of shards from prepare.py; empty = built-in world
    builtin_docs: int = 5000       # documents in the built-in corpus; validation gets 1/10 as many
    # batch and length of training
    batch_size: int = 16           # sequences per micro-step per process
    total_batch_tokens: int = 0    # tokens per optimizer step, all processes; 0 = batch x T x world
    max_steps: int = 250           # optimizer steps of the whole run (the schedule's length)
    max_tokens: int = 0            # if > 0: max_steps = max_tokens / total_batch_tokens
    stop_after: int = 0            # end this run after N steps (the schedule stays); 0 = never
    # optimizer: AdamW, linear warmup then cosine decay to min_lr
    lr: float = 1e-3               # peak learning rate, reached after the warmup
    min_lr: float = 1e-4           # learning rate at the end of the cosine decay
    warmup_steps: int = 20         # steps of linear warmup
    weight_decay: float = 0.1      # AdamW weight decay of the matrices (not of biases and norms)
    beta2: float = 0.95            # AdamW's decay of the squared-gradient average
    grad_clip: float = 1.0         # largest gradient norm; 0 = no clipping
    # system
    device: str = "auto"           # auto, cpu, cuda or cuda:N
    dtype: str = "auto"            # auto = bfloat16 on a GPU that has it, else float32
    compile: bool = False          # torch.compile the model: faster steps after a slow start
    peak_flops: float = 0.0        # peak FLOP/s for MFU; 0 = look up the GPU's bf16 peak
    seed: int = 1337               # seeds the weights, the data order and the pause positions
    # output
    out_dir: str = "out"           # where ckpt.pt and metrics.jsonl go
    log_interval: int = 10         # steps between lines of metrics.jsonl
    eval_interval: int = 50        # steps between evaluations and checkpoints; 0 = one at the end
    eval_iters: int = 10           # validation batches per evaluation
    resume: bool = False           # continue out_dir/ckpt.pt exactly where it stopped
    overwrite: bool = False        # start a new run in an out_dir that holds one, deleting it


# -----------------------------------------------------------------------------------------------
# A train.py run: its out_dir, checked before any work and readied once it starts, and what the
# weights it starts from fix: the model's shape (GPT-2's for --init_from, the checkpoint's for
# --resume), and for --resume also the tokenizer and pause_frac.

def check_out_dir(out_dir, resume, overwrite):
    """Refuse, before any work, what would lose a run: an --out_dir that is a file, --resume
    with nothing to resume, or a new run over a checkpoint without --overwrite."""
    path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out_dir {out_dir} is a file, not a directory; choose another")
    if resume and overwrite:
        raise UserError(f"--resume continues {path}, --overwrite deletes it: give one of them")
    if resume and not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint at {path}; run without --resume to start "
                         "training")
    if not resume and not overwrite and os.path.exists(path):
        raise UserError(f"{path} exists: give --resume to continue that run, --overwrite to "
                         "replace it, or another --out_dir")


def start_run_dir(out_dir, resume_step=None):
    """Ready out_dir for a run, with a note for each file removed. A resumed run keeps the rows of
    its JSON-lines logs up to resume_step (rows after it come from a run killed after its last
    checkpoint, and will be written again); a new run deletes the files of an earlier one. Both
    delete the temporary files of writes that were killed (one can be as big as a model)."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("ckpt.pt", "metrics.jsonl"):
        path = os.path.join(out_dir, name)
        for tmp in glob.glob(os.path.join(glob.escape(out_dir), f".{glob.escape(name)}.*.tmp")):
            os.remove(tmp)
            print(f"note: removed {tmp}, left by a write that was interrupted")
        if resume_step is None and os.path.exists(path):
            os.remove(path)
            print(f"note: removed {path} of an earlier run")
        elif resume_step is not None and name.endswith(".jsonl") and os.path.isfile(path):
            rows = [r for r in read_jsonl(path) if r["step"] <= resume_step]
            atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), "w")


def model_config_of(cfg, vocab_size, ckpt=None):
    """The model's shape for train.py's TrainConfig cfg: for a new run, a preset with the flags'
    overrides; from GPT-2 or on --resume, the shape of those weights, which the flags may repeat
    but not change (the context may be cut: the position embeddings beyond it go unused)."""
    flags = {k: getattr(cfg, k) for k in ("block_size", "n_layer", "n_head", "n_embd")
             if getattr(cfg, k)}
    if ckpt is None and not cfg.init_from:
        return config_from_preset(cfg.preset, vocab_size, dropout=cfg.dropout, **flags)
    if ckpt is not None:
        source, shape = f"--resume: {cfg.out_dir}/ckpt.pt", ckpt["model_config"]
    else:
        source, shape = f"--init_from {cfg.init_from}", gpt2.hf_config(cfg.init_from)
    model_config = GPTConfig(**{**shape, "vocab_size": vocab_size, "dropout": cfg.dropout})
    # --preset counts only when given: its default is no request
    asked = {**(PRESETS[cfg.preset] if cfg.preset != type(cfg).preset else {}), **flags}
    for k, v in asked.items():
        have = getattr(model_config, k)
        if v > have or (v < have and k != "block_size"):
            flag = f"--{k}" if k in flags else f"--preset {cfg.preset}"
            raise UserError(f"{source} has {k}={have} but this run has {k}={v} ({flag}); the "
                             "weights fix the model's shape: leave the flag out")
    return model_config


def check_resume(ckpt, path, cfg, tok_name, world_size, master):
    """Refuse a checkpoint of another tokenizer or pause_frac, naming the field; a change of the
    batch or world size is allowed, with a note."""
    for key, saved, value in (("tokenizer", ckpt["tokenizer"], tok_name),
                              ("pause_frac", ckpt["pause_frac"], cfg.pause_frac)):
        if saved != value:
            raise UserError(f"--resume: {path} was made with {key}={saved}, this run has "
                             f"{key}={value}; use the same data and flags, or another --out_dir")
    then = ckpt["config"]["batch_size"], ckpt.get("world_size", world_size)
    if then != (cfg.batch_size, world_size) and master:
        print(f"note: resuming with batch_size {cfg.batch_size} x {world_size} processes; the "
              f"checkpoint was written with {then[0]} x {then[1]}. The data continues where it "
              "stopped, but the steps are no longer those of one uninterrupted run.")


# -----------------------------------------------------------------------------------------------

def check(cfg):
    """Every flag, checked before any work; an error names the flag and what it accepts."""
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # e.g. --device cuda on a CPU machine
    if cfg.preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(sorted(PRESETS))}, got "
                         f"{cfg.preset!r}")
    # A zero among the first would divide by zero or train nothing; a negative --grad_clip would
    # turn every gradient around, so that the run climbs the loss.
    check_ranges(cfg, {">= 1": "batch_size max_steps builtin_docs log_interval eval_iters",
                       ">= 0": "block_size n_layer n_head n_embd total_batch_tokens max_tokens "
                               "stop_after min_lr warmup_steps weight_decay grad_clip peak_flops "
                               "seed eval_interval",
                       "in [0, 1)": "pause_frac dropout beta2", "> 0": "lr"})
    n_head = cfg.n_head or PRESETS[cfg.preset]["n_head"]
    n_embd = cfg.n_embd or PRESETS[cfg.preset]["n_embd"]
    if not cfg.init_from and n_embd % n_head:
        raise UserError(f"--n_head {n_head} does not divide --n_embd {n_embd}: each head takes "
                         "n_embd / n_head of the width")
    if cfg.resume and cfg.init_from:
        raise UserError("--resume continues out_dir/ckpt.pt with its own weights; leave out "
                         "--init_from")
    check_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite)


@torch.no_grad()
def evaluate(model, val_loaders, eval_iters, autocast, world_size):
    """Mean loss of the first eval_iters validation batches, averaged over ranks: the same
    batches every time, so that values compare across steps."""
    model.eval()
    out = {}
    for key, loader in val_loaders.items():
        start = loader.state_dict()
        losses = torch.zeros(eval_iters, device=model.device)
        for i in range(eval_iters):
            x, y = to_device(*loader.next_batch(), model.device)
            with autocast:
                losses[i] = model(x, y)[1]
        loader.load_state_dict(start)
        loss = losses.mean()
        if world_size > 1:
            dist.all_reduce(loss)  # a sum (gloo has no average), divided below
        out[key] = loss.item() / world_size
    model.train()
    return out


def next_batch(loader, device):
    """(loader state before the batch, its pause count, x, y): a checkpoint taken before this
    batch is used must hold the state that yields it again."""
    state, before = loader.state_dict(), loader.pause_tokens
    x, y = loader.next_batch()
    return state, loader.pause_tokens - before, *to_device(x, y, device)


# -----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> str:
    """Pretrain as cfg says; returns the path of out_dir/ckpt.pt. Callable in-process (DDP only
    when launched by torchrun)."""
    check(cfg)
    rank, local_rank, world_size, device = setup_ddp(cfg.device)
    master = rank == 0
    device_type = torch.device(device).type
    dtype, autocast = resolve_dtype(cfg.dtype, device)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")

    # ---- data, read now: a split too small for one global batch stops the run before step 1.
    # The tokenizer is the data's; the built-in world takes that of the checkpoint on --resume,
    # else GPT-2's with --init_from (the weights know no other), else bytes.
    ckpt = read_checkpoint(ckpt_path, device, "pretraining") if cfg.resume else None
    tok_name = ckpt["tokenizer"] if ckpt else "gpt2" if cfg.init_from else "byte"
    meta = None
    if cfg.data:
        meta = data_meta(cfg.data)  # checks every shard it lists, and their vocabulary
        tok_name = meta["tokenizer"]
        if cfg.init_from and tok_name != "gpt2":
            raise UserError(f"--init_from {cfg.init_from} needs data tokenized for GPT-2, but "
                             f"{cfg.data} holds {tok_name} tokens; prepare it with --tokenizer "
                             "gpt2")
        train_src = val_src = cfg.data
        if not meta["val_shards"]:
            val_src = None
            if master:
                print(f"note: {cfg.data} has no validation split; no val_loss will be logged")
    else:  # the built-in world: made in memory in about a second, train and val from other seeds
        train_src = builtin_tokens(cfg.builtin_docs, seed=0, tokenizer_name=tok_name)
        val_src = builtin_tokens(max(100, cfg.builtin_docs // 10), seed=1, tokenizer_name=tok_name)
    tok = get_tokenizer(tok_name)
    if cfg.init_from in gpt2.NAMES and world_size > 1:
        if local_rank == 0:  # one download per machine; the other processes read its files
            gpt2.download(cfg.init_from)
        dist.barrier()
    if cfg.resume:
        check_resume(ckpt, ckpt_path, cfg, tok.name, world_size, master)
    model_config = model_config_of(cfg, tok.vocab_size, ckpt)
    # The context T of the training windows: the model's, unless cut by --block_size.
    T = cfg.block_size or (ckpt["loader"]["block_size"] if ckpt else model_config.block_size)
    B = cfg.batch_size
    more_data = "prepare more data" if cfg.data else "raise --builtin_docs"  # if a split is short
    loader = PretrainLoader(train_src, B, T, cfg.pause_frac, tok.pause_id, rank, world_size,
                            cfg.seed, more_data=more_data, meta=meta)
    # Validation always reads from the start of its split; with pauses, val_loss is the PausePT
    # objective and val_loss_nopause the same text without pauses.
    evals = [("val_loss", cfg.pause_frac)] + ([("val_loss_nopause", 0.0)] if cfg.pause_frac else [])
    val_loaders = {key: PretrainLoader(val_src, B, T, frac, tok.pause_id, rank, world_size, seed=0,
                                       split="val", more_data=more_data, meta=meta)
                   for key, frac in evals if val_src is not None}

    # ---- batch arithmetic: total_batch_tokens = batch_size x block_size x world_size x grad_accum
    micro_tokens = B * T * world_size
    total = cfg.total_batch_tokens or micro_tokens
    if total % micro_tokens:
        q = total // micro_tokens
        raise UserError(f"--total_batch_tokens {total} is not a multiple of batch_size x "
                         f"block_size x world_size = {B} x {T} x {world_size} = {micro_tokens}; "
                         f"the nearest valid values are {max(1, q) * micro_tokens} and "
                         f"{(q + 1) * micro_tokens}")
    grad_accum = total // micro_tokens
    max_steps = math.ceil(cfg.max_tokens / total) if cfg.max_tokens else cfg.max_steps

    # ---- the model: random weights from the seed, or GPT-2's; then a checkpoint's on --resume
    torch.manual_seed(cfg.seed + rank)
    model = (gpt2.from_pretrained(cfg.init_from, tok.vocab_size, dropout=cfg.dropout)
             if cfg.init_from else GPT(model_config)).to(device)
    assert model.config == model_config  # the shape model_config_of checked the flags against
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (0.9, cfg.beta2), device_type)
    step, tokens_seen, real_tokens_seen = 0, 0, 0
    if cfg.resume:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
        step, tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        real_tokens_seen = ckpt["real_tokens_seen"]
        if master:
            # Other ranks keep their own seeds: their random numbers only drive dropout.
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
            if device_type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        del ckpt
    if master:  # check() allowed a new run here only with --overwrite or without a checkpoint
        start_run_dir(cfg.out_dir, step if cfg.resume else None)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DDP(model, device_ids=[torch.device(device).index] if device_type == "cuda"
                    else None)
    peak = cfg.peak_flops or peak_flops_of(device)

    if master:
        name = cfg.init_from or cfg.preset
        print(f"model {name} {raw_model.num_params() / 1e6:.2f}M params ({model_config.n_layer}x"
              f"{model_config.n_embd}, context {T}), tokenizer {tok.name}, data "
              f"{cfg.data or 'built-in world'}, device {device} {dtype}, world {world_size}")
        print(f"{max_steps} steps x {total:,} tokens = {max_steps * total / 1e6:,.1f}M tokens "
              f"(pauses included); grad_accum {grad_accum}; pause_frac {cfg.pause_frac} -> "
              f"M_pt = {loader.num_pauses} pauses per sequence")
    # ---- the training loop. --stop_after ends this job early (a cluster's time limit), while the
    # schedule keeps its full length, so that a --resume continues it as if never stopped.
    end = min(max_steps, step + cfg.stop_after) if cfg.stop_after else max_steps
    bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True, desc="train")
    loader_state, n_pause, x, y = next_batch(loader, device)
    step_loss = torch.zeros((), device=device)
    pauses_since_log, t0, steps_since_log = 0, time.time(), 0
    model.train()
    while step < end:
        lr = lr_at(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(grad_accum):
            # DDP all-reduces gradients in backward(); on inner micro-steps that would be wasted
            # work, so gradients are synchronized only on the last one.
            sync = micro == grad_accum - 1 or world_size == 1
            with (nullcontext() if sync else model.no_sync()), autocast:
                _, loss = model(x, y)
                loss = loss / grad_accum  # the step's gradient is the mean over micro-batches
            pauses_since_log += n_pause
            # Fetching the next batch here lets its copy to the GPU overlap this backward pass.
            loader_state, n_pause, x, y = next_batch(loader, device)
            loss.backward()
            step_loss += loss.detach()  # kept on the device: reading it would wait for the GPU
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_since_log += 1
        tokens_seen += total
        bar.update(1)

        # Evaluate every eval_interval steps and at the end; a checkpoint follows every evaluation
        # and ends every run, also one cut short by --stop_after.
        do_eval = val_loaders and cfg.eval_interval and (step % cfg.eval_interval == 0
                                                         or step == max_steps)
        do_ckpt = do_eval or step == end or (cfg.eval_interval and step % cfg.eval_interval == 0)
        if step % cfg.log_interval == 0 or do_ckpt or step == 1:
            # The all-reduce is a sync point: done only on logging steps, on every rank alike.
            stats = torch.tensor([step_loss.item() / steps_since_log, pauses_since_log],
                                 dtype=torch.float64, device=device)
            if world_size > 1:
                dist.all_reduce(stats)
            loss_avg, pauses = stats[0].item() / world_size, int(stats[1].item())
            real_tokens_seen += steps_since_log * total - pauses
            dt = time.time() - t0
            tok_s = steps_since_log * total / dt
            mfu = raw_model.estimate_mfu(tok_s / world_size, peak, T) if peak else None
            row = {"step": step, "loss": round(loss_avg, 6), "lr": lr, "tokens_seen": tokens_seen,
                   "real_tokens_seen": real_tokens_seen, "tokens_per_s": round(tok_s, 1)}
            if mfu is not None:
                row["mfu"] = round(mfu, 4)
            if do_eval:
                losses = evaluate(raw_model, val_loaders, cfg.eval_iters, autocast, world_size)
                row.update({k: round(v, 6) for k, v in losses.items()})
            # A diverged model is stopped here, before its NaN weights could replace the last
            # good checkpoint; every rank sees the same all-reduced numbers and stops alike.
            bad = [f"{k} {v}" for k, v in row.items() if "loss" in k and not math.isfinite(v)]
            if bad:
                raise UserError(f"step {step}: {', '.join(bad)}; stopped without saving, so "
                                 f"{ckpt_path} keeps the last good state, if any. The usual cause "
                                 f"is a learning rate too high for this model (--lr {cfg.lr}): try "
                                 "a smaller one, or a longer --warmup_steps")
            if master:
                bar.set_postfix(loss=f"{loss_avg:.4f}", tok_s=f"{tok_s:,.0f}",
                                mfu=f"{100 * mfu:.1f}%" if mfu is not None else "n/a")
                append_jsonl(row, metrics_path)
                if do_eval:
                    tqdm.write(f"step {step}: " + ", ".join(
                        f"{k} {row[k]:.4f}" for k in ("loss", *val_loaders)))
            step_loss.zero_()
            pauses_since_log, steps_since_log = 0, 0
        if do_ckpt and master:
            # Everything a resumed run needs to continue exactly as this one would have.
            rng = {"torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(device) if device_type == "cuda" else None}
            save_checkpoint({"model": raw_model.state_dict(), "model_config": asdict(model_config),
                             "optimizer": optimizer.state_dict(), "step": step,
                             "config": asdict(cfg), "tokenizer": tok.name,
                             "pause_id": tok.pause_id, "pause_frac": cfg.pause_frac,
                             "loader": loader_state, "rng": rng, "world_size": world_size,
                             "tokens_seen": tokens_seen, "real_tokens_seen": real_tokens_seen},
                            ckpt_path)
        if steps_since_log == 0:
            t0 = time.time()  # tokens/s counts training only, not evaluation or checkpoints
    bar.close()
    if world_size > 1:
        dist.barrier()  # every rank returns only once the checkpoint is on disk
    if master:
        print(f"{'stopped' if step < max_steps else 'finished'} at step {step}/{max_steps}; "
              f"checkpoint {ckpt_path}")
        print(f"try it: python sample.py --ckpt {ckpt_path}")
    return ckpt_path


def parse_args(argv=None):
    parser = config_parser(TrainConfig, __doc__, choices={"preset": sorted(PRESETS),
                                                          "dtype": ["auto", "float32", "bfloat16"]})
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv=None):
    try:
        train(parse_args(argv))
    except UserError as e:  # a flag or file refused: one line that names it, no traceback
        raise SystemExit(f"train.py: error: {e}")
    finally:
        cleanup_ddp()


if __name__ == "__main__":
    main()
