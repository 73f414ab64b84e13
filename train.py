"""
Pretraining, standard (StdPT) or with pauses (PausePT), from a laptop CPU to a cluster:

    python train.py                     # built-in corpus, tiny model, CPU, about 2 minutes
    python train.py --pause_frac 0.1    # with pause-pretraining: M_pt = 10% of T
    python train.py --init_from gpt2 --pause_frac 0.1 --data DIR   # GPT-2, continued
    torchrun --standalone --nproc_per_node 8 train.py --preset 1b --data DIR --pause_frac 0.1

With --pause_frac > 0, each sequence gets M_pt = pause_frac x block_size
<pause> tokens at random places (paper Sec. 3.1; data.PretrainLoader through
pause.py), and the loss skips the targets that are pauses. The rest is
nanoGPT-style training: AdamW, warmup and cosine decay, gradient accumulation,
DDP, bf16 autocast, and checkpoints that resume exactly.
"""
import json
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import PretrainLoader, builtin_tokens, get_tokenizer, read_checked_meta, to_device
from model import PRESETS
from tools import gpt2
from tools.checkpoint import (check_resume, checked_model_config, make_model, read_checkpoint,
                              restore, save_checkpoint)
from tools.common import (UserError, append_jsonl, atomic_write, check_ranges, cleanup_ddp,
                          lr_at, own_run_dir, parse_config, peak_flops_of, read_jsonl,
                          remove_interrupted_writes, require, require_writable_dir,
                          resolve_device, resolve_dtype, setup_ddp)


@dataclass
class TrainConfig:
    # the method
    pause_frac: float = 0.0      # M_pt / block_size; 0 = standard pretraining, the paper uses 0.1
    # model
    preset: str = "tiny"         # model shape, which the next four flags override in part
    block_size: int = 0          # context T in tokens; 0 = the preset's (GPT-2's: 1024)
    n_layer: int = 0             # transformer blocks; 0 = the preset's
    n_head: int = 0              # attention heads, a divisor of n_embd; 0 = the preset's
    n_embd: int = 0              # width d_model; 0 = the preset's
    dropout: float = 0.0         # dropout probability; 0 = none, usual in pretraining
    init_from: str = ""          # GPT-2's weights: gpt2, gpt2-medium, -large, -xl or a DIR
    # data
    data: str = ""               # a directory made by tools/prepare.py; empty = built-in world
    builtin_docs: int = 5000     # documents of the built-in corpus; validation gets 1/10
    # batch and length of training
    batch_size: int = 16         # sequences per micro-step per process
    total_batch_tokens: int = 0  # tokens per step, all processes; 0 = batch x T x world
    max_steps: int = 250         # optimizer steps of the whole run (the schedule's length)
    max_tokens: int = 0          # if > 0: max_steps = max_tokens / total_batch_tokens
    stop_after: int = 0          # end this run after N steps (the schedule stays); 0 = never
    # optimizer: AdamW, linear warmup then cosine decay to min_lr
    lr: float = 1e-3             # peak learning rate, reached after the warmup
    min_lr: float = 1e-4         # learning rate at the end of the decay, at most --lr
    warmup_steps: int = 20       # steps of linear warmup
    weight_decay: float = 0.1    # AdamW weight decay of the matrices (not biases or norms)
    beta2: float = 0.95          # AdamW's decay of the squared-gradient average
    grad_clip: float = 1.0       # largest gradient norm; 0 = no clipping
    # system
    device: str = "auto"         # auto, cpu, cuda or cuda:N
    dtype: str = "auto"          # auto = bfloat16 on a GPU that has it, else float32
    compile: bool = False        # torch.compile the model: faster steps after a slow start
    peak_flops: float = 0.0      # peak FLOP/s for MFU; 0 = look up the GPU's bf16 peak
    seed: int = 1337             # seeds the weights, the data order and the pause positions
    # output
    out_dir: str = "out"         # where ckpt.pt and metrics.jsonl go
    log_interval: int = 10       # steps between lines of metrics.jsonl
    eval_interval: int = 50      # steps between evaluations and checkpoints; 0 = one at the end
    eval_iters: int = 10         # validation batches an evaluation, at most the split holds
    resume: bool = False         # continue out_dir/ckpt.pt exactly where it stopped
    overwrite: bool = False      # start a new run in an out_dir that holds one, deleting it

    def check(self):
        """Every flag and the out_dir, before any work; an error names the flag."""
        resolve_dtype(self.dtype, resolve_device(self.device))  # e.g. cuda on a CPU machine
        require(self.preset in PRESETS,
                f"--preset must be one of {', '.join(sorted(PRESETS))}, got {self.preset!r}")
        # Zero for the first would divide by zero or train nothing; a
        # negative --grad_clip would turn every gradient around.
        check_ranges(self, {
            ">= 1": "batch_size max_steps builtin_docs log_interval eval_iters",
            ">= 0": "block_size n_layer n_head n_embd total_batch_tokens max_tokens "
                    "stop_after min_lr warmup_steps weight_decay grad_clip peak_flops "
                    "seed eval_interval",
            "in [0, 1)": "pause_frac dropout beta2",
            "> 0": "lr"})
        require(self.min_lr <= self.lr,
                f"--min_lr {self.min_lr} is above --lr {self.lr}: the decay would climb")
        n_head = self.n_head or PRESETS[self.preset]["n_head"]
        n_embd = self.n_embd or PRESETS[self.preset]["n_embd"]
        require(self.init_from or n_embd % n_head == 0,
                f"--n_head {n_head} does not divide --n_embd {n_embd}")
        require(not (self.resume and self.init_from),
                "--resume continues its checkpoint's weights; leave out --init_from")
        require(not self.data or os.path.isdir(self.data),
                f"--data {self.data} is not a directory of prepared data")
        require_writable_dir(self.out_dir, "--out_dir")
        check_run_dir(self)


# -----------------------------------------------------------------------------
# The run directory: one run owns it while it lives (tools.common.own_run_dir).
# A new run replaces an earlier one only when told to (--overwrite), and only
# once it has a checkpoint of its own; a resumed one continues its log.

def check_run_dir(cfg):
    """Refuse --resume with nothing to resume, or a new run over a checkpoint."""
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    require(not (cfg.resume and cfg.overwrite),
            "--resume continues a run, --overwrite deletes it: give one of them")
    if cfg.resume:
        require(os.path.isfile(ckpt),
                f"--resume: no checkpoint at {ckpt}; leave out --resume to start a run")
    else:
        require(cfg.overwrite or not os.path.exists(ckpt),
                f"{ckpt} exists: give --resume to continue that run, --overwrite to "
                "replace it, or another --out_dir")


RUN_FILES = ("ckpt.pt", "metrics.jsonl")
EARLIER = ".earlier"  # where --overwrite keeps the earlier run until it is replaced


def set_earlier_run_aside(out_dir):
    """Move an earlier run's files into out_dir/.earlier/, whole."""
    aside = os.path.join(out_dir, EARLIER)
    os.makedirs(aside, exist_ok=True)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(out_dir, name)):
            os.replace(os.path.join(out_dir, name), os.path.join(aside, name))


def delete_earlier_run(out_dir):
    """This run has its own checkpoint now: the earlier run's files go."""
    aside = os.path.join(out_dir, EARLIER)
    if os.path.isdir(aside):
        shutil.rmtree(aside)
        print(f"note: removed the earlier run's files from {aside}, replaced by this run's")


def put_earlier_run_back(out_dir):
    """A run that failed (or was killed) before its first checkpoint: the earlier
    run's files go back in place, and this run's log of unsaved steps goes."""
    aside = os.path.join(out_dir, EARLIER)
    if not os.path.isdir(aside):
        return
    for name in RUN_FILES:
        kept = os.path.join(aside, name)
        if os.path.exists(kept):
            os.replace(kept, os.path.join(out_dir, name))
        elif os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    os.rmdir(aside)
    print(f"note: {out_dir} holds the earlier run again: the run that was to replace it "
          "ended before its first checkpoint")


@contextmanager
def run_dir_owned(cfg, master):
    """Rank 0 owns out_dir for the run's lifetime; an --overwrite run that fails
    before its first checkpoint leaves the earlier run as it was."""
    if not master:
        yield
        return
    with own_run_dir(cfg.out_dir):
        # An --overwrite run killed earlier: finish or undo its replacement.
        if os.path.exists(os.path.join(cfg.out_dir, "ckpt.pt")):
            delete_earlier_run(cfg.out_dir)
        put_earlier_run_back(cfg.out_dir)
        check_run_dir(cfg)  # again, now that it is ours
        try:
            yield
        except BaseException:
            put_earlier_run_back(cfg.out_dir)
            raise


def cut_log_after(path, step):
    """Drop a log's rows after step: a run killed after its last checkpoint
    wrote them, and the resumed run writes them again."""
    if os.path.isfile(path):
        kept = [json.dumps(r) + "\n" for r in read_jsonl(path) if r["step"] <= step]
        atomic_write(path, lambda f: f.writelines(kept), "w")


# -----------------------------------------------------------------------------
# What a run reads: its data and the batch arithmetic (the model's shape and a
# checkpoint's state are tools/checkpoint.py's). Each refuses what does not fit,
# before any work.

def tokenizer_for(cfg, meta, ckpt):
    """The data's tokenizer. The built-in world's is the checkpoint's on --resume, else
    GPT-2's with --init_from (the weights know no other), else bytes."""
    name = "gpt2" if cfg.init_from else "byte"
    if ckpt:
        name = ckpt["tokenizer"]
    if meta:
        name = meta["tokenizer"]
    require(not cfg.init_from or name == "gpt2",
            f"--init_from {cfg.init_from} needs data tokenized for GPT-2, but {cfg.data} "
            f"holds {name} tokens; prepare it with --tokenizer gpt2")
    return get_tokenizer(name)


def make_loaders(cfg, tok, T, rank, world_size, meta):
    """The training loader and {metric: validation loader}, from a prepared
    directory or the built-in world (made in memory in a second; train and val
    from other seeds)."""
    if meta:
        train_src = val_src = cfg.data
    else:
        train_src = builtin_tokens(cfg.builtin_docs, 0, tok.name)
        val_src = builtin_tokens(max(100, cfg.builtin_docs // 10), 1, tok.name)
    more = "prepare more data" if meta else "raise --builtin_docs"
    kw = dict(rank=rank, world_size=world_size, more_data=more, meta=meta)
    B = cfg.batch_size
    loader = PretrainLoader(train_src, B, T, cfg.pause_frac, tok.pause_id, seed=cfg.seed, **kw)
    if meta and not meta["val_shards"]:
        return loader, {}
    # With pauses, val_loss is the PausePT objective and val_loss_nopause the same text
    # without pauses.
    fracs = {"val_loss": cfg.pause_frac}
    if cfg.pause_frac:
        fracs["val_loss_nopause"] = 0.0
    val_loaders = {k: PretrainLoader(val_src, B, T, frac, tok.pause_id, split="val", **kw)
                   for k, frac in fracs.items()}
    # An evaluation reads the split's first eval_iters batches, each window once.
    batches = val_loaders["val_loss"].num_windows // (B * world_size)
    require(cfg.eval_iters <= batches,
            f"--eval_iters {cfg.eval_iters}: the validation split holds {batches} batches "
            f"of {B} x {world_size} ranks; give at most {batches}, or {more}")
    return loader, val_loaders


def grad_accum_of(cfg, T, world_size):
    """(tokens a step, micro-steps a step): batch x T x world x grad_accum."""
    micro = cfg.batch_size * T * world_size
    total = cfg.total_batch_tokens or micro
    q = total // micro
    require(total % micro == 0,
            f"--total_batch_tokens {total} is not a multiple of batch_size x block_size x "
            f"world_size = {micro}; the nearest valid values are {max(1, q) * micro} "
            f"and {(q + 1) * micro}")
    return total, total // micro


def ready_run_dir(cfg, step):
    """Delete what a killed write left; on --resume the log's rows after step,
    else set the earlier run's files aside (check_run_dir allowed that only
    with --overwrite)."""
    remove_interrupted_writes(cfg.out_dir, RUN_FILES)
    if cfg.resume:
        cut_log_after(os.path.join(cfg.out_dir, "metrics.jsonl"), step)
    else:
        set_earlier_run_aside(cfg.out_dir)


def nan_culprit(cfg):
    """The flag a diverged run most likely owes its NaN to, and what to do."""
    # AdamW scales the weights by 1 - lr x weight_decay a step.
    if cfg.weight_decay > 1 and cfg.lr * cfg.weight_decay >= 1:
        return (f"The cause is --weight_decay {cfg.weight_decay}: with --lr "
                f"{cfg.lr} it flips the weights' sign each step; the usual values "
                "are 0 to 0.1")
    return (f"The usual cause is a learning rate too high for this model "
            f"(--lr {cfg.lr}): try a smaller one, or a longer --warmup_steps")


# -----------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, val_loaders, eval_iters, autocast, world_size):
    """Mean loss of the first eval_iters validation batches, averaged over
    ranks: the same batches every time, so that values compare across steps."""
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
    """(loader state before the batch, its pause count, x, y): a checkpoint
    taken before this batch is used must hold the state that yields it again."""
    state = loader.state_dict()
    before = loader.pause_tokens
    x, y = loader.next_batch()
    return state, loader.pause_tokens - before, *to_device(x, y, device)


# -----------------------------------------------------------------------------

def train(cfg: TrainConfig) -> str:
    """Pretrain as cfg says (checked by cfg.check()); returns the checkpoint's path.
    Callable in-process; DDP when launched by torchrun."""
    rank, local_rank, world_size, device = setup_ddp(cfg.device)
    master = rank == 0
    device_type = torch.device(device).type
    dtype, autocast = resolve_dtype(cfg.dtype, device)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    # One run owns out_dir while it lives: a second one started there is refused.
    with run_dir_owned(cfg, master):
        # ---- what the run starts from, checked before any work
        ckpt = None
        if cfg.resume:
            ckpt = read_checkpoint(ckpt_path, device, "pretraining")
        meta = read_checked_meta(cfg.data) if cfg.data else None
        tok = tokenizer_for(cfg, meta, ckpt)
        if cfg.init_from in gpt2.NAMES and world_size > 1:
            if local_rank == 0:  # one download a machine; the others read its files
                gpt2.download(cfg.init_from)
            dist.barrier()
        preset_given = cfg.preset != TrainConfig.preset  # the default is no request
        model_config = checked_model_config(cfg, tok.vocab_size, ckpt, preset_given)
        # The context T of the windows: the model's, unless cut by --block_size (on
        # --resume: as the checkpoint's run cut it).
        T = ckpt["loader"]["block_size"] if ckpt else model_config.block_size
        T = cfg.block_size or T
        total, grad_accum = grad_accum_of(cfg, T, world_size)
        max_steps = math.ceil(cfg.max_tokens / total) if cfg.max_tokens else cfg.max_steps
        loader, val_loaders = make_loaders(cfg, tok, T, rank, world_size, meta)
        if ckpt:
            check_resume(ckpt, cfg, tok, world_size, master)
        # ---- the model and AdamW; on --resume, the checkpoint's state
        model = make_model(cfg, model_config, tok, device, rank)
        betas = (0.9, cfg.beta2)
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, betas, device_type)
        step, tokens_seen, real_tokens_seen = 0, 0, 0  # the run's counters
        if ckpt:
            counters = restore(ckpt, model, optimizer, loader, device, master)
            step, tokens_seen, real_tokens_seen = counters
        del ckpt
        if master:
            ready_run_dir(cfg, step)
            if meta and not val_loaders:
                print(f"note: {cfg.data} has no validation split: no val_loss")
            millions = model.num_params() / 1e6
            shape = f"{model_config.n_layer}x{model_config.n_embd}, context {T}"
            print(f"model {cfg.init_from or cfg.preset}, {millions:.2f}M params ({shape})")
            print(f"tokenizer {tok.name}, data {cfg.data or 'built-in world'}, device "
                  f"{device} {dtype}, world {world_size}")
            print(f"{max_steps} steps x {total:,} tokens, grad_accum {grad_accum}; "
                  f"M_pt = {loader.num_pauses} pauses a sequence")
        raw_model = model
        if cfg.compile:
            model = torch.compile(model)
        if world_size > 1:
            ids = [torch.device(device).index] if device_type == "cuda" else None
            model = DDP(model, device_ids=ids)
        peak = cfg.peak_flops or peak_flops_of(device)

        # ---- the training loop. --stop_after ends this job early (a cluster's
        # time limit) while the schedule keeps its length, so that --resume
        # continues it as if never cut.
        end = min(max_steps, step + cfg.stop_after) if cfg.stop_after else max_steps
        bar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True,
                   desc="train")
        loader_state, n_pause, x, y = next_batch(loader, device)
        step_loss = torch.zeros((), device=device)
        pauses_since_log = 0
        steps_since_log = 0
        t0 = time.time()
        model.train()
        while step < end:
            lr = lr_at(step, max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(grad_accum):
                # DDP all-reduces gradients in backward(); on inner micro-steps
                # that would be wasted work, so only the last one syncs.
                sync = micro == grad_accum - 1 or world_size == 1
                with nullcontext() if sync else model.no_sync(), autocast:
                    _, loss = model(x, y)
                    loss = loss / grad_accum  # a mean over the micro-batches
                pauses_since_log += n_pause
                # Fetching the next batch now: its copy to the GPU overlaps backward.
                loader_state, n_pause, x, y = next_batch(loader, device)
                loss.backward()
                step_loss += loss.detach()  # on the device: .item() would wait
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            steps_since_log += 1
            tokens_seen += total
            bar.update(1)

            # Evaluate every eval_interval steps and at the end of the schedule
            # (only there with --eval_interval 0). A checkpoint follows each
            # evaluation and ends each run.
            on_interval = cfg.eval_interval and step % cfg.eval_interval == 0
            do_eval = bool(val_loaders) and (on_interval or step == max_steps)
            do_ckpt = on_interval or step == end
            if step % cfg.log_interval == 0 or do_ckpt or step == 1:
                # The all-reduce is a sync point: only on logging steps.
                stats = [step_loss.item() / steps_since_log, pauses_since_log]
                stats = torch.tensor(stats, dtype=torch.float64, device=device)
                if world_size > 1:
                    dist.all_reduce(stats)
                loss_avg = stats[0].item() / world_size
                real_tokens_seen += steps_since_log * total - int(stats[1].item())
                tok_s = steps_since_log * total / (time.time() - t0)
                row = {"step": step, "loss": round(loss_avg, 6), "lr": lr,
                       "tokens_seen": tokens_seen, "real_tokens_seen": real_tokens_seen,
                       "tokens_per_s": round(tok_s, 1)}
                mfu = raw_model.estimate_mfu(tok_s / world_size, peak, T) if peak else None
                if mfu is not None:
                    row["mfu"] = round(mfu, 4)
                if do_eval:
                    losses = evaluate(raw_model, val_loaders, cfg.eval_iters, autocast,
                                      world_size)
                    row.update({k: round(v, 6) for k, v in losses.items()})
                # A diverged model stops here, before its NaN weights could
                # replace the last good checkpoint; every rank sees the same
                # all-reduced numbers.
                bad = [f"{k} {v}" for k, v in row.items()
                       if "loss" in k and not math.isfinite(v)]
                if bad:
                    raise UserError(f"step {step}: {', '.join(bad)}; stopped without saving, "
                                    f"so {ckpt_path} keeps the last good state, if any. "
                                    f"{nan_culprit(cfg)}")
                if master:
                    shown = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
                    bar.set_postfix(loss=f"{loss_avg:.4f}", tok_s=f"{tok_s:,.0f}", mfu=shown)
                    append_jsonl(row, log_path)
                    if do_eval:
                        said = [f"{k} {row[k]:.4f}" for k in ("loss", *val_loaders)]
                        tqdm.write(f"step {step}: " + ", ".join(said))
                step_loss.zero_()
                pauses_since_log = 0
                steps_since_log = 0
            if do_ckpt and master:
                # All a resumed run needs to continue exactly as this one.
                cuda_rng = torch.cuda.get_rng_state(device) if device_type == "cuda" else None
                save_checkpoint({
                    "model": raw_model.state_dict(), "model_config": asdict(model_config),
                    "optimizer": optimizer.state_dict(), "loader": loader_state,
                    "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
                    "step": step, "tokens_seen": tokens_seen,
                    "real_tokens_seen": real_tokens_seen, "world_size": world_size,
                    "config": asdict(cfg), "pause_frac": cfg.pause_frac,
                    "tokenizer": tok.name, "pause_id": tok.pause_id}, ckpt_path)
                delete_earlier_run(cfg.out_dir)  # --overwrite: replaced now
            if steps_since_log == 0:
                t0 = time.time()  # tokens/s counts training only
        bar.close()
        if world_size > 1:
            dist.barrier()  # every rank returns only once the checkpoint is on disk
    if master:
        done = "finished" if step == max_steps else "stopped"
        print(f"{done} at step {step}/{max_steps}; checkpoint {ckpt_path}")
        print(f"try it: python sample.py --ckpt {ckpt_path}")
    return ckpt_path


def parse_args(argv=None):
    choices = {"preset": sorted(PRESETS), "dtype": ["auto", "float32", "bfloat16"]}
    return parse_config(TrainConfig, __doc__, argv, choices)


def main(argv=None):
    cfg = parse_args(argv)
    try:
        train(cfg)
    except UserError as e:  # one line that names the flag or file, no traceback
        raise SystemExit(f"train.py: error: {e}")
    finally:
        cleanup_ddp()


if __name__ == "__main__":
    main()
