"""
The paper's comparison end to end: pretrain a standard (StdPT) and a pause (PausePT) model,
finetune each without and with M_ft pauses, and evaluate the four configurations StdPT_StdFT,
StdPT_PauseFT, PausePT_StdFT and PausePT_PauseFT over several seeds, with the paper's ablations.

    python -m tools.experiment --smoke              # seconds: the whole path at tiny sizes
    python -m tools.experiment                      # the count task, 5 seeds: ~15 min, 2 CPU cores
    python -m tools.experiment --minf_sweep --where prepend --filler_baseline   # plus ablations
    python -m tools.experiment --task world:chain   # train.py + finetune.py on the built-in world
    python -m tools.experiment --task squad --data data/ --std_ckpt STD/ckpt.pt \\
        --pause_ckpt PAUSE/ckpt.pt

Two kinds of task, one table:
- count (the default) is built so that pauses have work to do (below). It runs in this process,
  seeds in parallel, because its pretraining needs documents whose targets sit behind pauses
  (pmask), which train.py's loader does not make; its models train in seconds.
- world:add|chain|story and the nine real tasks run the scripts a user runs at scale, as
  subprocesses: train.py pretrains StdPT and PausePT on the built-in world (unless --std_ckpt and
  --pause_ckpt are given), then every configuration is one finetune.py run whose results.json is
  read back (an ablation's other M_inf or filler: finetune.py --max_steps 0 on the finetuned
  model). Their defaults (10 pauses, 250 steps, 3 seeds) show with `--task world:chain --help`.
Both print a markdown table (mean ± std over seeds, each seed, the answer loss) and Welch's t of
PausePT_PauseFT against StdPT_StdFT, and write out_dir/compare.json, rewritten after every run.

The count task (byte tokens): K digits, '?', a query letter (A..J = 0..9), answer "=c\\n":
    "305912?D=3\\n"   c = number of digits a with (a + q) mod 10 >= 5; q = 3 here, so 3, 5, 2 count
Nothing about an item can be computed before the query is read, so a shallow model (2 layers) must
find K items and test each of them *after* the query, at the few positions that follow it. M_ft >= K
pauses give it K extra positions, one per item (width instead of depth).

Its pretraining mixes documents of this world (both models see the same problems):
    echo    "305912?D" "305912\\n"        items copied after the query: slot j learns to find item j
    cot     "305912?D" "101001" "=3\\n"    per-item results written where pauses will sit later
    direct  "305912?D=3\\n"
    filler  "305912?D" P P P P P P "=3\\n"  (PausePT; StdPT sees it as a direct document)
    pmask   inputs as filler, but each pause predicts the next per-item result (PausePT; a share
            p_pmask of the cot documents; StdPT sees them as cot)
and PausePT inserts M_pt = pause_frac * (block_size + 1) random pauses into every row (Sec. 3.1).
"""
import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import pause
from data import get_tokenizer, world_split
from model import GPT, GPTConfig
from tasks import BUILTIN, TASKS
from tools.checkpoint import checkpoint_kind, read_checkpoint
from tools.common import (UserError, check_ranges, config_parser, lr_at, own_run_dir, require,
                          require_writable_dir, resolve_device, write_json)

TOK = get_tokenizer("byte")
EOT, PAUSE_ID, DOT = TOK.eot_id, TOK.pause_id, TOK.encode(".")[0]
CONFIGS = ("StdPT_StdFT", "StdPT_PauseFT", "PausePT_StdFT", "PausePT_PauseFT")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


@dataclass
class ExperimentConfig:
    # what to compare
    task: str = "count"            # the designed count task, a built-in world task or a real one
    num_pauses: int = 6            # M_ft of the PauseFT rows, and their M_inf (other tasks: 10)
    pause_frac: float = 0.1        # PausePT: M_pt = pause_frac x sequence length random pauses
    seeds: int = 5                 # seeds of finetuning (count: of pretraining too) (others: 3)
    seed: int = 0                  # the first seed
    # the paper's ablations
    minf_sweep: bool = False       # PauseFT evaluated with M_inf = 0..2 M_ft (others: 5 values)
    where: str = "append"          # prepend: also PauseFT rows with the pauses before the prompt
    filler_baseline: bool = False  # StdPT_StdFT with M_ft '.' at inference (count: StdPT_FillerFT)
    eqflops: bool = True           # count: a deeper StdPT_StdFT with the FLOPs of PausePT_PauseFT
    # training and evaluation
    pretrain_steps: int = 1500     # pretraining steps of both models (others: 250, train.py's)
    finetune_steps: int = 300      # finetuning steps of every configuration (others: 250)
    finetune_lr: float = 3e-3      # peak learning rate of finetuning (others: 1e-3)
    batch_size: int = 64           # rows per step (count: pretraining too) (others: 32)
    warmup_steps: int = 100        # linear warmup (count: at most 1/5 of the steps) (others: 30)
    weight_decay: float = 0.1      # AdamW weight decay
    n_eval: int = 1000             # test examples (others: -1, finetune.py's: all, or 200 made)
    # other tasks: pretrained checkpoints and task files
    std_ckpt: str = ""             # a finished StdPT train.py checkpoint; empty: pretrain one
    pause_ckpt: str = ""           # a finished PausePT train.py checkpoint; empty: pretrain one
    data: str = ""                 # real tasks: the directory or training file for finetune.py
    eval_data: str = ""            # real tasks: the evaluation file, when --data names a file
    n_train: int = -1              # finetuning examples; -1: all (built-in tasks: 4000 made)
    # the count task only: its documents and its model
    K: int = 6                     # items per prompt (<= 9: the count is one digit)
    p_echo: float = 0.3            # share of echo documents
    p_cot: float = 0.5             # of the others: share of cot documents (the rest direct/filler)
    p_filler: float = 0.25         # of the others: share of filler documents (StdPT: direct)
    p_pmask: float = 0.5           # of the cot documents: share shown as pmask (StdPT: cot)
    pretrain_lr: float = 1e-2      # peak learning rate of pretraining
    n_layer: int = 2               # a plain GPT small enough that pauses have a job to do
    n_embd: int = 64               # width
    n_head: int = 4                # attention heads
    block_size: int = 24           # context
    workers: int = 0               # parallel processes; 0: one per CPU core (cpu) or 8 (cuda)
    # system
    device: str = "auto"           # auto (cuda if available), cpu, cuda or cuda:N
    out_dir: str = "out_experiment"  # compare.json, and for other tasks every run's directory
    smoke: bool = False            # tiny steps and evaluation: checks the whole path in seconds

    def check(self):
        defaults = ExperimentConfig()
        for name in OTHERS_ONLY if self.task == "count" else COUNT_ONLY:
            require(getattr(self, name) == getattr(defaults, name),
                    f"--{name} does not apply to --task {self.task}")
        check_ranges(self, {">= 1": "num_pauses seeds batch_size pretrain_steps finetune_steps",
                            ">= 0": "seed warmup_steps weight_decay",
                            "> 0": "finetune_lr"})
        require(self.n_eval >= 1 or (self.task != "count" and self.n_eval == -1),
                f"--n_eval must be >= 1 (other tasks: or -1 for all), got {self.n_eval}")
        require(self.n_train >= 1 or self.n_train == -1,
                f"--n_train must be >= 1, or -1 for all, got {self.n_train}")
        resolve_device(self.device)  # an unknown device, or cuda on a machine without one
        require_writable_dir(self.out_dir, "--out_dir")
        if self.task == "count":
            self.check_count()
            return
        require(0.0 < self.pause_frac < 1.0, "--pause_frac must be in (0, 1) for PausePT (the "
                f"paper: 0.1), got {self.pause_frac}")
        require(self.task not in TASKS or self.data,
                f"--task {self.task} needs its files: --data DIR (after "
                f"`python -m tools.prepare task {self.task} --out DIR`)")
        for name in ("data", "eval_data"):
            path = getattr(self, name)
            require(not path or os.path.exists(path),
                    f"--{name} {path}: no such file or directory")

    def check_count(self):
        require(1 <= self.K <= 9, f"--K must be 1..9 (the count is one digit), got {self.K}")
        pauses = 2 * self.num_pauses if self.minf_sweep else self.num_pauses
        longest = (self.K + 2) + pauses + 2
        require(longest <= self.block_size,
                f"prompt ({self.K + 2}) + pauses + answer need {longest} positions, more than "
                f"--block_size {self.block_size}; raise --block_size or lower --num_pauses")
        for name in ("p_echo", "p_cot", "p_filler", "p_pmask"):
            require(0.0 <= getattr(self, name) <= 1.0,
                    f"--{name} must be a probability in [0, 1], got {getattr(self, name)}")
        require(self.p_cot + self.p_filler <= 1.0, "--p_cot + --p_filler must be <= 1 (the rest "
                f"are direct documents), got {self.p_cot + self.p_filler}")
        require(0.0 <= self.pause_frac < 1.0,
                f"--pause_frac must be in [0, 1) (the paper uses 0.1), got {self.pause_frac}")
        check_ranges(self, {"> 0": "pretrain_lr", ">= 0": "workers",
                            ">= 1": "n_layer n_head n_embd"})
        require(self.n_embd % self.n_head == 0,
                f"--n_head {self.n_head} must divide --n_embd {self.n_embd}")


# Tasks other than count finetune a pretrained model of 4 x 128 on longer answers: finetune.py's
# own defaults. They replace the dataclass's before the command line is read.
PRETRAINED_DEFAULTS = dict(num_pauses=10, seeds=3, pretrain_steps=250, finetune_steps=250,
                           finetune_lr=1e-3, batch_size=32, warmup_steps=30, n_eval=-1)
COUNT_ONLY = ("eqflops", "K", "p_echo", "p_cot", "p_filler", "p_pmask", "pretrain_lr", "n_layer",
              "n_embd", "n_head", "block_size", "workers")
OTHERS_ONLY = ("std_ckpt", "pause_ckpt", "data", "eval_data", "n_train")
SMOKE = dict(pretrain_steps=20, finetune_steps=10, n_eval=50, batch_size=16)


# -----------------------------------------------------------------------------------------------
# What is finetuned and evaluated: one plan for both kinds of task

def plan(cfg, pt):
    """What is finetuned from one pretrained model ('StdPT', 'PausePT' or 'deeper'), and how each
    finetuned model is evaluated: [(M_ft, where, filler of finetuning, [(M_inf, filler)...])...].
    A filler ('.') takes the place of the pauses: the baseline that asks whether the pause token
    itself matters or only the extra positions."""
    m, count = cfg.num_pauses, cfg.task == "count"
    if pt == "deeper":
        return [(0, "append", "", [(0, "")])]
    # each M_inf costs one forward pass on count, a decoding of the test set on the others
    sweep = range(2 * m + 1) if count else sorted({0, m // 2, m, 3 * m // 2, 2 * m})
    pause_evals = [(mi, "") for mi in sweep] if cfg.minf_sweep else [(m, "")]
    std_evals = [(0, "")] + ([(m, ".")] if cfg.filler_baseline and pt == "StdPT" else [])
    runs = [(0, "append", "", std_evals), (m, "append", "", pause_evals)]
    if cfg.where == "prepend":
        runs.append((m, "prepend", "", [(m, "")]))
    if cfg.filler_baseline and pt == "StdPT" and count:  # finetune.py's --filler is inference only
        runs.append((m, "append", ".", [(m, ".")]))
    return runs


def config_name(pt, m_ft, where, filler_ft, filler, n_layer=0):
    if pt == "deeper":
        return f"StdPT_StdFT, {n_layer} layers (equal FLOPs)"
    name = f"{pt}_{'FillerFT' if filler_ft else 'PauseFT' if m_ft else 'StdFT'}"
    return (name + (" (prepend)" if where == "prepend" else "")
            + (f" + filler '{filler}'" if filler and not filler_ft else ""))


def result_row(pt, seed, m_ft, m_inf, where, filler_ft, filler, value, loss, **extra):
    """One evaluation of one seed; value in %, answer loss in nats per answer token."""
    name = config_name(pt, m_ft, where, filler_ft, filler, extra.get("n_layer", 0))
    return dict(config=name, pt="StdPT" if pt == "deeper" else pt, seed=seed, M_ft=m_ft,
                M_inf=m_inf, where=where, filler=filler, value=value, answer_loss=loss, **extra)


# -----------------------------------------------------------------------------------------------
# The count task (pure)

def count_problem(rng, K):
    """K random digits and a query q (0..9); rng is a random.Random."""
    return [rng.randrange(10) for _ in range(K)], rng.randrange(10)


def solve(a, q):
    """Per-item results r_i = [(a_i + q) mod 10 >= 5] and their count, the answer."""
    r = [int((ai + q) % 10 >= 5) for ai in a]
    return r, sum(r)


def render(a, q):
    """The problem as text: prompt "305912?D", per-item results "101001", answer "=3\\n"."""
    r, c = solve(a, q)
    return "".join(map(str, a)) + "?" + "ABCDEFGHIJ"[q], "".join(map(str, r)), f"={c}\n"


def draw(rng, K, split):
    """A problem whose prompt falls in `split`: the built-in world's hash split keeps test prompts
    out of pretraining and finetuning."""
    while True:
        a, q = count_problem(rng, K)
        if world_split(render(a, q)[0]) == split:
            return a, q


def document(a, q, kind):
    """One pretraining document as (inputs, labels), lists of ids of equal length. The label of a
    position is what the position before it must predict; it differs from the input only in pmask
    documents, whose pauses hide the per-item results that are still the targets."""
    prompt, results, answer = render(a, q)
    p, res, ans, K = TOK.encode(prompt), TOK.encode(results), TOK.encode(answer), len(a)
    if kind == "echo":
        ids = p + TOK.encode("".join(map(str, a)) + "\n")
    elif kind == "cot":
        ids = p + res + ans
    elif kind == "direct":
        ids = p + ans
    elif kind == "filler":
        ids = p + [PAUSE_ID] * K + ans
    elif kind == "pmask":
        return p + [PAUSE_ID] * K + ans + [EOT], p + res + ans + [EOT]
    else:
        raise ValueError(f"unknown document kind {kind!r}")
    return ids + [EOT], ids + [EOT]


def document_kind(rng, cfg, pause_pt):
    if rng.random() < cfg.p_echo:
        return "echo"
    u = rng.random()
    if u < cfg.p_cot:
        # the draw is made for both models, so StdPT and PausePT see the same sequence of kinds
        return "pmask" if rng.random() < cfg.p_pmask and pause_pt else "cot"
    return "filler" if u < cfg.p_cot + cfg.p_filler and pause_pt else "direct"


def pretrain_batch(rng, cfg, pause_pt, gen):
    """(x, y) of shape (batch_size, block_size): documents packed into rows; PausePT rows also get
    the paper's random pauses, through pause.insert_pauses, in every row. This is the piece that
    train.py's loader lacks: labels that differ from the inputs (pmask)."""
    T, B = cfg.block_size, cfg.batch_size
    inputs, labels = [], []
    for _ in range(B):
        row, lab = [], []
        while len(row) < T + 1:
            kind = document_kind(rng, cfg, pause_pt)  # drawn before the problem, from one rng
            i, l = document(*draw(rng, cfg.K, "train"), kind)
            row, lab = row + i, lab + l
        inputs.append(row[:T + 1])
        labels.append(lab[:T + 1])
    inputs, labels = torch.tensor(inputs), torch.tensor(labels)
    if pause_pt and cfg.pause_frac > 0:
        # Insert the pauses into the positions 0..T (with T + 1 marking a pause) and move inputs
        # and labels along the same way: a pmask document keeps its hidden targets wherever it
        # lands.
        m_pt = pause.num_pretrain_pauses(cfg.pause_frac, T + 1)
        slots = pause.insert_pauses(torch.arange(T + 1).expand(B, -1), m_pt, T + 1, generator=gen)
        is_pause, src = slots == T + 1, slots.clamp(max=T)
        inputs = inputs.gather(1, src).masked_fill(is_pause, PAUSE_ID)
        labels = labels.gather(1, src).masked_fill(is_pause, PAUSE_ID)
    # S_ignore (Sec. 3.1): no loss where the target is a pause
    return inputs[:, :-1], pause.pause_targets(labels[:, 1:], PAUSE_ID)


def finetune_rows(problems, M, where="append", filler_id=PAUSE_ID):
    """(x, y) for pause-finetuning (Sec. 3.2) or its evaluation: prompt, M pauses (or M filler
    tokens, the '.' baseline), then the answer "=c\\n" with loss on the answer only."""
    rows = [pause.finetune_example(TOK.encode(prompt), TOK.encode(answer), M, filler_id, where)
            for prompt, answer in problems]
    return torch.stack([x for x, _ in rows]), torch.stack([y for _, y in rows])


def problems(rng, K, n, split):
    """n (prompt, answer) pairs of one split."""
    return [render(*draw(rng, K, split))[::2] for _ in range(n)]


# -----------------------------------------------------------------------------------------------
# The count task: training and evaluation in this process

def make_model(cfg, n_layer, seed, device):
    torch.manual_seed(seed)  # StdPT and PausePT of one seed start from the same weights
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=TOK.vocab_size, n_layer=n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd)).to(device)


def train_steps(model, cfg, steps, lr, next_batch, lr_flag):
    """AdamW with linear warmup and cosine decay to 0 (common.lr_at), as train.py and
    finetune.py step, on batches that next_batch() makes. A loss that is no longer finite stops
    the run, naming lr_flag: a diverged model would only report 0% and a NaN answer loss."""
    device = model.device
    opt = model.configure_optimizers(cfg.weight_decay, lr, device_type=device.type)
    warmup = min(cfg.warmup_steps, steps // 5)  # short smoke runs still reach the peak
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup, 0.0)
        x, y = next_batch()
        # the model's loss skips IGNORE targets: pauses (PausePT) and prompts (finetuning)
        _, loss = model(x.to(device), y.to(device))
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {step + 1} of {steps}: the "
                            f"run diverged; lower {lr_flag} (now {lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # clipped at 1.0 as train.py's default: the 1e-2 peak rate of these tiny models spikes
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def pretrain(cfg, pause_pt, seed, device, n_layer):
    model = make_model(cfg, n_layer, seed, device)
    rng, gen = random.Random(f"pretrain/{seed}"), torch.Generator().manual_seed(seed)
    train_steps(model, cfg, cfg.pretrain_steps, cfg.pretrain_lr,
                lambda: pretrain_batch(rng, cfg, pause_pt, gen), "--pretrain_lr")
    return model


def finetune(base, cfg, M, seed, where="append", filler_id=PAUSE_ID):
    """A copy of `base` finetuned with M_ft = M; every configuration of a seed sees the same
    problems in the same order."""
    model, rng = copy.deepcopy(base), random.Random(f"finetune/{seed}")
    train_steps(model, cfg, cfg.finetune_steps, cfg.finetune_lr,
                lambda: finetune_rows(problems(rng, cfg.K, cfg.batch_size, "train"), M, where,
                                      filler_id), "--finetune_lr")
    return model


@torch.no_grad()
def accuracy(model, test, M, where="append", filler_id=PAUSE_ID):
    """(exact match of the whole answer "=c\\n" in %, answer loss in nats per token) after
    M_inf = M pauses, teacher-forced in one pass with the pause and padding ids banned, as
    pause.pause_generate does. An answer is right under greedy decoding exactly when every
    teacher-forced argmax is right."""
    model.eval()
    x, y = finetune_rows(test, M, where, filler_id)
    logits, _ = model(x.to(model.device))
    logits[..., PAUSE_ID] = float("-inf")
    logits[..., TOK.vocab_size:] = float("-inf")
    logits = logits.cpu()
    ok = (logits.argmax(-1) == y) | (y == pause.IGNORE)
    # the answer loss under the same banned ids, as finetune.py reports it for the other tasks
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=pause.IGNORE)
    return 100.0 * ok.all(1).float().mean().item(), loss.item()


def flops_per_answer(model_config, K, M):
    """Forward FLOPs of one pass over prompt + M pauses + "=c" (the work of KV-cached decoding of
    the answer): 2 per parameter and token for the matmuls (output layer included), plus
    attention's QK^T and AV, 4 * n_embd * t at position t of every layer."""
    c, T = model_config, (K + 2) + M + 2
    with torch.random.fork_rng(devices=[]):  # counting parameters leaves the random state alone
        n = GPT(c).num_params()
    return 2 * n * T + 2 * c.n_layer * c.n_embd * T * (T + 1)


def deeper_n_layer(cfg):
    """The fewest layers for which a standard model without pauses spends at least the FLOPs per
    answer of the base model with M_ft pauses: the same extra compute, as depth."""
    base = GPTConfig(block_size=cfg.block_size, vocab_size=TOK.vocab_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd)
    target, n = flops_per_answer(base, cfg.K, cfg.num_pauses), cfg.n_layer
    while flops_per_answer(replace(base, n_layer=n), cfg.K, 0) < target:
        n += 1
    return n


def count_job(args):
    """One pretrained model of one seed ('StdPT', 'PausePT' or 'deeper') and everything
    finetuned from it; returns its result rows."""
    cfg, pt, seed = args
    torch.set_num_threads(1)  # tiny matmuls: processes in parallel beat threads
    t0, device = time.time(), torch.device(cfg.device)
    test = problems(random.Random("test"), cfg.K, cfg.n_eval, "test")
    n_layer = deeper_n_layer(cfg) if pt == "deeper" else cfg.n_layer
    base = pretrain(cfg, pt == "PausePT", seed, device, n_layer)
    rows = []
    for m_ft, where, filler_ft, evals in plan(cfg, pt):
        model = finetune(base, cfg, m_ft, seed, where, DOT if filler_ft else PAUSE_ID)
        for m_inf, filler in evals:  # an evaluation is one forward pass: no refinetuning
            value, loss = accuracy(model, test, m_inf, where, DOT if filler else PAUSE_ID)
            flops = flops_per_answer(model.config, cfg.K, m_inf)
            rows.append(result_row(pt, seed, m_ft, m_inf, where, filler_ft, filler, value, loss,
                                   n_layer=n_layer, flops=flops))
    return [dict(r, job_s=round(time.time() - t0, 1)) for r in rows]


def run_count(cfg, t0):
    """Every (seed, pretrained model) as one job, in parallel processes."""
    cfg = replace(cfg, device="cuda" if cfg.device == "auto" and torch.cuda.is_available()
                  else "cpu" if cfg.device == "auto" else cfg.device)
    # seed by seed, so that a run cut short still holds whole seeds; the longest job of each first
    kinds = (["deeper"] if cfg.eqflops else []) + ["PausePT", "StdPT"]
    jobs = [(cfg, kind, cfg.seed + s) for s in range(cfg.seeds) for kind in kinds]
    workers = cfg.workers or (8 if cfg.device.startswith("cuda") else os.cpu_count() or 1)
    workers = min(workers, len(jobs))
    device = torch.cuda.get_device_name(0) if cfg.device.startswith("cuda") else "cpu"
    extra = dict(metric="exact", device=device, workers=workers,
                 deeper_n_layer=deeper_n_layer(cfg) if cfg.eqflops else None)
    print(f"{len(jobs)} jobs ({cfg.seeds} seeds x {kinds}) on {device} with {workers} process(es)")
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    runs = []
    try:
        results = pool.imap_unordered(count_job, jobs) if pool else map(count_job, jobs)
        for job_rows in tqdm(results, total=len(jobs), desc="jobs"):
            runs += job_rows
            result = save(cfg, runs, t0, extra)  # after every job: a cut-off run keeps its seeds
    except BaseException:
        if pool:  # a diverged job: the others are not waited for
            pool.terminate()
        raise
    finally:
        if pool:
            pool.close()
            pool.join()
    return result


# -----------------------------------------------------------------------------------------------
# Other tasks: train.py and finetune.py as subprocesses. A pretrained checkpoint is used only when
# its run is finished and it is of the kind its flag says.

def planned_steps(ckpt):
    """The length of the schedule of the train.py run that wrote ckpt: --max_steps, or
    --max_tokens over the tokens of one step. (--stop_after ends a run early, not the plan.)"""
    run = ckpt["config"]
    if run.get("max_tokens"):
        return math.ceil(run["max_tokens"] / (ckpt["tokens_seen"] / ckpt["step"]))
    return run["max_steps"]


def check_pretrained(path, pt, flag):
    """Exits naming the file and what was found, unless path is a finished train.py checkpoint
    of kind pt ('StdPT': pause_frac 0, 'PausePT': > 0)."""
    ckpt = read_checkpoint(path)  # a file that is no checkpoint of this project is named there
    if checkpoint_kind(ckpt) != "pretraining":
        raise UserError(f"{flag} {path}: a {checkpoint_kind(ckpt)} checkpoint; expected a "
                         "pretraining one written by train.py")
    frac = ckpt["pause_frac"]
    if (frac > 0) != (pt == "PausePT"):
        found = "PausePT" if frac > 0 else "StdPT"
        raise UserError(f"{flag} {path}: pause_frac {frac}, a {found} checkpoint; {flag} needs "
                         f"a {pt} one (pause_frac {'> 0' if pt == 'PausePT' else '0'})")
    if ckpt["step"] < planned_steps(ckpt):
        raise UserError(f"{flag} {path}: pretraining stopped at step {ckpt['step']} of "
                         f"{planned_steps(ckpt)}; finish it with `python train.py --resume` and "
                         "the flags of that run, or pass another checkpoint")


def settings(pause_frac, data, max_steps):
    return f"pause_frac {pause_frac}, data {data or 'built-in'}, max_steps {max_steps}"


def pretraining_plan(cfg):
    """{'StdPT'|'PausePT': (checkpoint path, train.py arguments, or None when it is ready)}. All
    checked before any work: a given checkpoint must be finished and of its kind; the driver's own
    (out_dir/pretrain_std|pause) is reused when finished, resumed when cut short, and refused when
    it was made with other settings."""
    out = {}
    for pt, flag, frac in (("StdPT", "--std_ckpt", 0.0), ("PausePT", "--pause_ckpt",
                                                           cfg.pause_frac)):
        given = getattr(cfg, flag[2:])
        if given:
            check_pretrained(given, pt, flag)
            out[pt] = (given, None)
            continue
        run_dir = os.path.join(cfg.out_dir, "pretrain_pause" if frac else "pretrain_std")
        path = os.path.join(run_dir, "ckpt.pt")
        args = ["--out_dir", run_dir, "--pause_frac", str(frac),
                "--max_steps", str(cfg.pretrain_steps), "--device", cfg.device]
        if os.path.exists(path):
            ckpt = read_checkpoint(path)
            kind = checkpoint_kind(ckpt)
            made = f"a {kind} checkpoint" if kind != "pretraining" else settings(
                ckpt["pause_frac"], ckpt["config"]["data"], planned_steps(ckpt))
            want = settings(frac, "", cfg.pretrain_steps)
            if made != want:
                raise UserError(f"{path} holds another run ({made}); this one needs {want}. "
                                 f"Use another --out_dir, or delete {run_dir}")
            if ckpt["step"] >= cfg.pretrain_steps:
                print(f"reusing {path} ({pt}, finished at step {ckpt['step']})")
                args = None
            else:
                print(f"resuming {path} ({pt}, stopped at step {ckpt['step']})")
                args.append("--resume")
        out[pt] = (path, args)
    return out


def run_script(script, args, quiet):
    """`python script args` from this repository; quiet: its output is kept and shown only when
    it fails. Exits with the command and its last lines when it fails."""
    cmd = [sys.executable, os.path.join(ROOT, script), *args]
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]) if quiet else ""
        raise UserError(f"{' '.join(cmd)}\nfailed with exit code {proc.returncode}\n{tail}")


def finetune_run(cfg, ckpt, seed, m_ft, m_inf, where, filler, run_dir, steps, save):
    """One finetune.py run: finetune ckpt for `steps` steps with M_ft pauses (0 steps: evaluate
    it as it is), evaluate with M_inf; returns its results.json. save: keep the model."""
    args = ["--ckpt", ckpt, "--task", cfg.task, "--num_pauses", m_ft, "--num_pauses_eval", m_inf,
            "--where", where, "--seed", seed, "--max_steps", steps,
            "--batch_size", cfg.batch_size, "--lr", cfg.finetune_lr,
            "--warmup_steps", cfg.warmup_steps, "--weight_decay", cfg.weight_decay,
            "--n_train", cfg.n_train, "--n_eval", cfg.n_eval, "--device", cfg.device,
            "--out_dir", run_dir, "--overwrite"]  # the driver's own directory: rerun, replaced
    for flag, value in (("--filler", filler), ("--data", cfg.data), ("--eval_data", cfg.eval_data)):
        args += [flag, value] if value else []
    run_script("finetune.py", [str(a) for a in args + (["--save"] if save else [])], quiet=True)
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def run_pretrained(cfg, pretraining, t0):
    """Pretrain StdPT and PausePT where pretraining_plan says so, then finetune.py runs as the
    plan says."""
    ckpts = {}
    for pt, (path, args) in pretraining.items():
        if args:
            print(f"pretraining {pt}: python train.py {' '.join(args)}")
            run_script("train.py", args, quiet=False)
        ckpts[pt] = path
    # seed by seed, so that compare.json of a run cut short holds whole seeds
    to_run = [(seed, pt, m_ft, where, evals)
              for seed in range(cfg.seed, cfg.seed + cfg.seeds) for pt in ("StdPT", "PausePT")
              for m_ft, where, _, evals in plan(cfg, pt)]
    runs, extra = [], dict(ckpts=ckpts)
    for seed, pt, m_ft, where, evals in to_run:
        # The first evaluation finetunes, and keeps the model when more evaluations follow;
        # those evaluate that same model as it is (finetune.py --max_steps 0).
        ckpt, steps = ckpts[pt], cfg.finetune_steps
        for m_inf, filler in evals:
            run_dir = os.path.join(cfg.out_dir, f"{pt}_{'PauseFT' if m_ft else 'StdFT'}_{where}"
                                   f"_Minf{m_inf}{'_filler' if filler else ''}_seed{seed}")
            res = finetune_run(cfg, ckpt, seed, m_ft, m_inf, where, filler, run_dir, steps,
                               save=steps > 0 and len(evals) > 1)
            if steps:
                ckpt, steps = os.path.join(run_dir, "ckpt.pt"), 0
            runs.append(result_row(pt, seed, m_ft, m_inf, where, "", filler, res["value"],
                                   res["answer_loss"], run_dir=run_dir))
            extra["metric"], loss = res["metric"], res["answer_loss"]
            print(f"seed {seed}  {runs[-1]['config']:28s} M_ft={m_ft:<3d} M_inf={m_inf:<3d} "
                  f"{res['metric']} {res['value']:5.1f}  answer loss "
                  f"{'n/a' if loss is None else f'{loss:.3f}'}  ({time.time() - t0:.0f} s)")
            result = save(cfg, runs, t0, extra)
    return result


# -----------------------------------------------------------------------------------------------
# Statistics and the report

def welch(a, b):
    """Welch's t for mean(a) - mean(b), with its Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # no spread at all: the sign of the difference is all there is
        diff = statistics.mean(a) - statistics.mean(b)
        return (math.copysign(math.inf, diff) if diff else 0.0), math.nan
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    return t, (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def row_order(r):
    """The paper's four configurations first, then the ablations, each by pretrained model."""
    ablation = r["config"] not in CONFIGS or r["M_inf"] != r["M_ft"]
    return (ablation, "equal FLOPs" in r["config"], r["pt"] != "StdPT", r["M_ft"] > 0,
            r["where"], r["filler"], r["config"], r["M_inf"])


def summarize(runs):
    """One line per (configuration, M_inf): the values over seeds, their mean and spread."""
    groups = {}
    for r in sorted(runs, key=lambda r: (row_order(r), r["seed"])):
        groups.setdefault((r["config"], r["M_inf"]), []).append(r)
    lines = []
    for g in groups.values():
        values, losses = [r["value"] for r in g], [r["answer_loss"] for r in g]
        line = dict(config=g[0]["config"], M_ft=g[0]["M_ft"], M_inf=g[0]["M_inf"],
                    seeds=[r["seed"] for r in g], values=values)
        line["mean"], line["std"] = mean_std(values)
        if None not in losses:  # multiple-choice tasks have no answer loss
            line["loss_mean"], line["loss_std"] = mean_std(losses)
        if "flops" in g[0]:
            line.update(n_layer=g[0]["n_layer"], flops=g[0]["flops"])
        lines.append(line)
    return lines


def markdown(lines, task, metric):
    has_loss, has_flops = "loss_mean" in lines[0], "flops" in lines[0]
    out = [f"| configuration | M_ft | M_inf | {task} {metric} % (mean ± std) | per seed |"
           + (" answer loss, nats/token |" if has_loss else "")
           + (" MFLOPs / answer |" if has_flops else ""),
           "| --- | --- | --- | --- | --- |" + " --- |" * (has_loss + has_flops)]
    for s in lines:
        out.append(f"| {s['config']} | {s['M_ft']} | {s['M_inf']} | {s['mean']:.1f} ± "
                   f"{s['std']:.1f} | {', '.join(f'{v:.1f}' for v in s['values'])} |"
                   + (f" {s['loss_mean']:.3f} ± {s['loss_std']:.3f} |" if has_loss else "")
                   + (f" {s['flops'] / 1e6:.2f} |" if has_flops else ""))
    return "\n".join(out)


def significance(lines, m):
    """Welch's t of PausePT_PauseFT against StdPT_StdFT and, on count, against the deeper model
    of equal FLOPs; only where both have two seeds or more."""
    pick = {(s["config"], s["M_inf"]): s for s in lines}
    a = pick.get(("PausePT_PauseFT", m))
    others = [pick.get(("StdPT_StdFT", 0))] + [s for s in lines if "equal FLOPs" in s["config"]]
    out = []
    for b in others:
        if a is None or b is None or min(len(a["values"]), len(b["values"])) < 2:
            continue
        t, dof = welch(a["values"], b["values"])
        diff, pooled = a["mean"] - b["mean"], math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
        in_std = diff / pooled if pooled else (math.copysign(math.inf, diff) if diff else 0.0)
        out.append(dict(a=a["config"], b=b["config"], diff=diff, welch_t=t, dof=dof,
                        diff_in_std=in_std))
    return out


def save(cfg, runs, t0, extra):
    """compare.json as it stands, written atomically."""
    lines = summarize(runs)
    result = dict(task=cfg.task, config=asdict(cfg), rows=lines, runs=runs,
                  table=markdown(lines, cfg.task, extra["metric"]),
                  significance=significance(lines, cfg.num_pauses), torch=torch.__version__,
                  wall_s=round(time.time() - t0, 1), **extra)
    write_json(result, os.path.join(cfg.out_dir, "compare.json"))
    return result


def minf_chart(lines, name, m_ft):
    """A text chart of one configuration's value against M_inf."""
    pts = sorted((s["M_inf"], s["mean"]) for s in lines if s["config"] == name)
    return "\n".join(f"M_inf {m:2d} |{'#' * round(0.4 * v):40s}| {v:5.1f}%"
                     + ("  (= M_ft)" if m == m_ft else "") for m, v in pts)


def experiment(cfg):
    if cfg.smoke:
        cfg = replace(cfg, seeds=min(cfg.seeds, 2), **SMOKE)
    # every check before any work, the pretrained checkpoints of the other tasks included
    pretraining = None if cfg.task == "count" else pretraining_plan(cfg)
    # One experiment at a time in out_dir: two would interleave their runs and compare.json.
    with own_run_dir(cfg.out_dir, "--out_dir"):
        if os.path.exists(os.path.join(cfg.out_dir, "compare.json")):
            print(f"note: {cfg.out_dir} holds an earlier experiment; its compare.json"
                  + (" is" if cfg.task == "count" else " and finetuning runs are") + " replaced")
        t0 = time.time()
        if pretraining is None:
            result = run_count(cfg, t0)
        else:
            result = run_pretrained(cfg, pretraining, t0)
    print(result["table"])
    for s in result["significance"]:
        print(f"\n{s['a']} - {s['b']}: {s['diff']:+.1f} points, Welch t = {s['welch_t']:.2f} "
              f"(dof {s['dof']:.1f}), difference / pooled std = {s['diff_in_std']:.2f}")
    if cfg.minf_sweep:
        print(f"\nPausePT_PauseFT {result['metric']} % against M_inf:\n"
              + minf_chart(result["rows"], "PausePT_PauseFT", cfg.num_pauses))
    print(f"\nwall time {result['wall_s']:.0f} s; written to "
          f"{os.path.join(cfg.out_dir, 'compare.json')}")
    return result


# -----------------------------------------------------------------------------------------------
# The command line

def parse_args(argv=None):
    """The config, checked at the door. --task picks the defaults first, so that
    `--task world:chain --help` shows the right ones."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--task", default="count")
    task = first.parse_known_args(argv)[0].task
    parser = config_parser(ExperimentConfig, __doc__, choices={
        "task": ["count", *BUILTIN, *TASKS], "where": ["append", "prepend"]})
    if task != "count":
        parser.set_defaults(**PRETRAINED_DEFAULTS)
    cfg = ExperimentConfig(**vars(parser.parse_args(argv)))
    try:
        cfg.check()
    except UserError as e:  # as tools.common.parse_config ends: one line naming the flag
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return cfg


def main(argv=None):
    try:
        experiment(parse_args(argv))
    except UserError as e:  # a flag or file refused: one line that names it, no traceback
        raise SystemExit(f"experiment: error: {e}")


if __name__ == "__main__":
    main()
