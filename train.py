"""
Pretraining, standard (StdPT) or with pauses (PausePT), from a laptop CPU to a cluster:

    python train.py                                   # built-in corpus, tiny model, CPU, ~2 minutes
    python train.py --pause_frac 0.1                  # the same with pause-pretraining (M_pt = 10%)
    torchrun --standalone --nproc_per_node 8 train.py --preset 1b --data c4 --pause_frac 0.1 ...

With --pause_frac > 0 every pretraining sequence gets M_pt = pause_frac x block_size <pause> tokens at
random places (paper Sec. 3.1, done by data.PretrainLoader through pause.py), and the loss skips the
targets that are pauses. Everything else is ordinary nanoGPT-style training: AdamW, linear warmup and
cosine decay, gradient accumulation, DDP, bf16 autocast, atomic and exactly resumable checkpoints.
"""
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

from common import (cleanup_ddp, config_parser, lr_at, peak_flops_of, save_checkpoint, setup_ddp)
from data import PretrainLoader, builtin_tokens, data_meta, get_tokenizer, to_device
from model import GPT, PRESETS, config_from_preset


@dataclass
class TrainConfig:
    # the method
    pause_frac: float = 0.0        # M_pt / block_size; 0 = standard pretraining, the paper uses 0.1
    # model (0 = the preset's value)
    preset: str = "tiny"
    block_size: int = 0
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    dropout: float = 0.0
    # data: a directory from `python prepare.py prepare` or `c4`; empty = the built-in world corpus
    data: str = ""
    builtin_docs: int = 5000       # size of the built-in corpus (documents); validation uses 1/10 of it
    # batch and length of training
    batch_size: int = 16           # sequences per micro-step per process
    total_batch_tokens: int = 0    # tokens per optimizer step over all processes; 0 = batch_size x block x world
    max_steps: int = 250
    max_tokens: int = 0            # if > 0: max_steps = max_tokens / total_batch_tokens (pauses included)
    stop_after: int = 0            # end this run after N steps with a checkpoint; the schedule stays as planned
    # optimizer: AdamW, linear warmup then cosine decay to min_lr
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0         # 0 = off
    # system
    device: str = "auto"           # auto, cpu, cuda, cuda:N
    dtype: str = "auto"            # auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16
    compile: bool = False
    peak_flops: float = 0.0        # accelerator peak FLOP/s for MFU; 0 = look up the GPU's bf16 peak
    seed: int = 1337
    # output
    out_dir: str = "out"
    log_interval: int = 10
    eval_interval: int = 50        # also how often a checkpoint is written
    eval_iters: int = 10
    resume: bool = False


# -----------------------------------------------------------------------------------------------

def _check_resume(ckpt, model_config, tok_name, cfg, path):
    """Refuse a checkpoint of another model shape, tokenizer or pause_frac, naming the field."""
    for key, saved_v, value in (("tokenizer", ckpt["tokenizer"], tok_name), ("pause_frac", ckpt["pause_frac"], cfg.pause_frac)):
        if saved_v != value:
            raise SystemExit(f"--resume: {path} was made with {key}={saved_v}, this run has {key}={value}; "
                             "use the same data and flags, or another --out_dir")
    saved = ckpt["model_config"]
    for key, value in asdict(model_config).items():
        if saved.get(key) != value:
            raise SystemExit(f"--resume: {path} has {key}={saved.get(key)} but this run has {key}={value}; "
                             "use the flags of the run that made it, or another --out_dir")


# -----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> str:
    """Pretrain as cfg says; returns the path of out_dir/ckpt.pt. Callable in-process (DDP only when
    launched by torchrun); restores torch's thread count and RNG on return."""
    owns_ddp = not dist.is_initialized()
    rank, local_rank, world_size, device = setup_ddp(cfg.device)
    master = rank == 0
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    try:
        return _train(cfg, rank, world_size, device, master)
    finally:
        torch.set_rng_state(rng_before)
        torch.set_num_threads(threads_before)
        if owns_ddp:
            cleanup_ddp()


def _train(cfg, rank, world_size, device, master):
    device_type = torch.device(device).type
    if device_type == "cpu" and world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    torch.manual_seed(cfg.seed + rank)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"--dtype must be auto, float32 or bfloat16, got {cfg.dtype!r}")
    # bf16 autocast: matmuls in bfloat16, weights and optimizer state in float32 (no loss scaling needed).
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # ---- data and model
    if cfg.data:
        meta = data_meta(cfg.data)  # names the tokenizer; exits naming the prepare command if data is missing
        tok = get_tokenizer(meta["tokenizer"])
        train_src = val_src = cfg.data
        has_val = bool(meta["val_shards"])
        if not has_val and master:
            print(f"note: {cfg.data} has no validation split; no val_loss will be logged")
    else:  # the built-in world: generated in memory in about a second, train and val from different seeds
        tok = get_tokenizer("byte")
        train_src = builtin_tokens(cfg.builtin_docs, seed=0)
        val_src = builtin_tokens(max(100, cfg.builtin_docs // 10), seed=1)
        has_val = True
    overrides = {k: getattr(cfg, k) for k in ("block_size", "n_layer", "n_head", "n_embd") if getattr(cfg, k)}
    model_config = config_from_preset(cfg.preset, tok.vocab_size, dropout=cfg.dropout, **overrides)
    T, B = model_config.block_size, cfg.batch_size
    loader = PretrainLoader(train_src, B, T, cfg.pause_frac, tok.pause_id, rank, world_size, cfg.seed)

    # ---- batch arithmetic: total_batch_tokens = batch_size x block_size x world_size x grad_accum
    micro_tokens = B * T * world_size
    total = cfg.total_batch_tokens or micro_tokens
    if total % micro_tokens:
        lo, hi = max(1, total // micro_tokens) * micro_tokens, (total // micro_tokens + 1) * micro_tokens
        raise SystemExit(f"--total_batch_tokens {total} is not a multiple of batch_size x block_size x world_size "
                         f"= {B} x {T} x {world_size} = {micro_tokens}; the nearest valid values are {lo} and {hi}")
    grad_accum = total // micro_tokens
    max_steps = math.ceil(cfg.max_tokens / total) if cfg.max_tokens else cfg.max_steps

    model = GPT(model_config).to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (0.9, cfg.beta2), device_type)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    step, tokens_seen, real_tokens_seen = 0, 0, 0
    if cfg.resume:
        if not os.path.isfile(ckpt_path):
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start training")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        _check_resume(ckpt, model_config, tok.name, cfg, ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
        step, tokens_seen, real_tokens_seen = ckpt["step"], ckpt["tokens_seen"], ckpt["real_tokens_seen"]
        if master:
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())  # other ranks keep their own seeds (dropout only)
            if device_type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
            # Drop log lines written after the checkpoint (a run killed later), so each step appears once.
            if os.path.isfile(metrics_path):
                with open(metrics_path) as f:
                    keep = [line for line in f if json.loads(line)["step"] <= step]
                with open(metrics_path + ".tmp", "w") as f:
                    f.writelines(keep)
                os.replace(metrics_path + ".tmp", metrics_path)
        del ckpt
    elif master and os.path.exists(metrics_path):
        os.remove(metrics_path)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DDP(model, device_ids=[torch.device(device).index] if device_type == "cuda" else None)
    peak = cfg.peak_flops or peak_flops_of(device)

    @torch.no_grad()
    def evaluate():
        """Validation loss averaged over eval_iters batches on every rank, then over ranks. With pauses
        it is the PausePT objective; val_loss_nopause is the same data without pauses."""
        model.eval()
        out = {}
        for key, frac in [("val_loss", cfg.pause_frac)] + ([("val_loss_nopause", 0.0)] if cfg.pause_frac else []):
            val = PretrainLoader(val_src, B, T, frac, tok.pause_id, rank, world_size, seed=0, split="val")
            losses = torch.zeros(cfg.eval_iters, device=device)
            for i in range(cfg.eval_iters):
                x, y = to_device(*val.next_batch(), device)
                with autocast:
                    losses[i] = raw_model(x, y)[1]
            loss = losses.mean()
            if world_size > 1:
                dist.all_reduce(loss)  # a sum (gloo has no average), divided below
            out[key] = loss.item() / world_size
        model.train()
        return out

    def checkpoint(state_of_loader):
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device_type == "cuda" else None}
        save_checkpoint({"model": raw_model.state_dict(), "model_config": asdict(model_config),
                         "optimizer": optimizer.state_dict(), "step": step, "config": asdict(cfg),
                         "tokenizer": tok.name, "pause_id": tok.pause_id, "pause_frac": cfg.pause_frac,
                         "loader": state_of_loader, "rng": rng, "tokens_seen": tokens_seen,
                         "real_tokens_seen": real_tokens_seen}, ckpt_path)

    def fetch():
        # The loader state *before* a batch is what a checkpoint must hold if that batch is not yet used.
        state, before = loader.state_dict(), loader.pause_tokens
        x, y = loader.next_batch()
        return state, loader.pause_tokens - before, *to_device(x, y, device)

    if master:
        n_params = raw_model.num_params() / 1e6
        print(f"model {cfg.preset} {n_params:.2f}M params ({model_config.n_layer}x{model_config.n_embd}, context {T}), "
              f"tokenizer {tok.name}, data {cfg.data or 'built-in world'}, device {device} {dtype}, world {world_size}")
        print(f"{max_steps} steps x {total:,} tokens = {max_steps * total / 1e6:,.1f}M tokens (pauses included); "
              f"grad_accum {grad_accum}; pause_frac {cfg.pause_frac} -> M_pt = {loader.num_pauses} pauses per sequence")
    end = min(max_steps, step + cfg.stop_after) if cfg.stop_after else max_steps
    bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True, desc="train")
    log = open(metrics_path, "a") if master else None
    loader_state, n_pause, x, y = fetch()
    step_loss = torch.zeros((), device=device)
    pauses_since_log, t0, steps_since_log = 0, time.time(), 0
    model.train()
    while step < end:
        lr = lr_at(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(grad_accum):
            # DDP all-reduces gradients in backward(); on inner micro-steps that would be wasted work,
            # so gradients are synchronized only on the last one.
            sync = micro == grad_accum - 1 or world_size == 1
            with (nullcontext() if sync else model.no_sync()), autocast:
                _, loss = model(x, y)
                loss = loss / grad_accum
            pauses_since_log += n_pause
            loader_state, n_pause, x, y = fetch()  # next batch's copy overlaps this step's backward
            loss.backward()
            step_loss += loss.detach()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_since_log += 1
        tokens_seen += total
        bar.update(1)

        do_eval = has_val and cfg.eval_interval and (step % cfg.eval_interval == 0 or step == max_steps)
        do_ckpt = do_eval or step == end or (cfg.eval_interval and step % cfg.eval_interval == 0)
        if step % cfg.log_interval == 0 or do_ckpt or step == 1:
            # The all-reduce is a sync point: done only on logging steps, on every rank alike.
            stats = torch.tensor([step_loss.item() / steps_since_log, pauses_since_log], dtype=torch.float64, device=device)
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
                row.update({k: round(v, 6) for k, v in evaluate().items()})
            if master:
                bar.set_postfix(loss=f"{loss_avg:.4f}", tok_s=f"{tok_s:,.0f}",
                                mfu=f"{100 * mfu:.1f}%" if mfu is not None else "n/a")
                log.write(json.dumps(row) + "\n")
                log.flush()
                if "val_loss" in row:
                    tqdm.write(f"step {step}: loss {loss_avg:.4f}, val_loss {row['val_loss']:.4f}"
                               + (f", val_loss_nopause {row['val_loss_nopause']:.4f}" if "val_loss_nopause" in row else ""))
            step_loss.zero_()
            pauses_since_log, steps_since_log = 0, 0
        if do_ckpt and master:
            checkpoint(loader_state)
        if steps_since_log == 0:
            t0 = time.time()  # tokens/s counts training only, not evaluation or checkpoints
    bar.close()
    if master:
        log.close()
        print(f"{'stopped' if step < max_steps else 'finished'} at step {step}/{max_steps}; checkpoint {ckpt_path}")
    if world_size > 1:
        dist.barrier()  # every rank returns only once the checkpoint is on disk
    return ckpt_path


def parse_args(argv=None):
    parser = config_parser(TrainConfig, __doc__, choices={"preset": sorted(PRESETS),
                                                          "dtype": ["auto", "float32", "bfloat16"]})
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
