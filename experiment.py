"""
The paper's comparison end to end, on a built-in task where pauses have work to do (issue 6):
pretrain a standard (StdPT) and a pause (PausePT) model, finetune each with and without pauses, and
evaluate the four configurations StdPT_StdFT, StdPT_PauseFT, PausePT_StdFT, PausePT_PauseFT over
several seeds, beside a deeper standard model that spends at least as many FLOPs per answer.

    python experiment.py                                          # 5 seeds, ~15-30 min on 2 CPU cores
    python experiment.py --minf_sweep --where prepend --filler_baseline   # plus the paper's ablations
    python experiment.py --smoke                                  # seconds: checks the code path

The task ("count", byte tokens): K digits, '?', a query letter (A..J = 0..9), answer "=c\\n":
    "305912?D=3\\n"   c = number of digits a with (a + q) mod 10 >= 5; q = 3 here, so 3, 5, 2 count
Nothing about an item can be computed before the query is read, so a shallow model (2 layers) must
find K items and test each of them *after* the query, at the few positions that follow it. M_ft >= K
pauses give it K extra positions, one per item (width instead of depth).

Pretraining mixes documents of this world (both models see the same problems):
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
import math
import multiprocessing as mp
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, fields, replace

import torch
from tqdm import tqdm

import pause
from data import get_tokenizer, world_split
from model import GPT, GPTConfig
from common import lr_at, write_json

TOK = get_tokenizer("byte")
EOT, PAUSE_ID, DOT = TOK.eot_id, TOK.pause_id, TOK.encode(".")[0]
CONFIGS = ("StdPT_StdFT", "StdPT_PauseFT", "PausePT_StdFT", "PausePT_PauseFT")


@dataclass
class ExperimentConfig:
    # the task
    K: int = 6                  # items per prompt (<= 9: the count is one digit)
    M_ft: int = 6               # pauses for PauseFT and pause-inference (M_inf = M_ft unless swept)
    where: str = "append"       # 'prepend': also finetune + evaluate the PauseFT rows with pauses first
    # the model: a plain GPT, small enough that pauses have a job to do
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    block_size: int = 24
    # pretraining (both models: same steps, same problems; PausePT adds pauses)
    pt_steps: int = 1500
    lr: float = 1e-2
    pause_frac: float = 0.1     # PausePT: M_pt = pause_frac * (block_size + 1) random pauses per row
    p_echo: float = 0.3         # share of echo documents
    p_cot: float = 0.5          # of the others: share of cot documents (the rest direct or filler)
    p_filler: float = 0.25      # of the others: share of filler documents (PausePT; StdPT: direct)
    p_pmask: float = 0.5        # of the cot documents: share shown as pmask (PausePT; StdPT: cot)
    # finetuning
    ft_steps: int = 300
    ft_lr: float = 3e-3
    batch_size: int = 64
    warmup: int = 100           # at most a fifth of the steps
    weight_decay: float = 0.1
    # evaluation and ablations
    n_eval: int = 1000
    seeds: int = 5
    seed: int = 0
    minf_sweep: bool = False    # PausePT_PauseFT evaluated with M_inf = 0 .. 2 M_ft
    filler_baseline: bool = False  # StdPT with M_ft '.' instead of pauses: at inference, and finetuned
    eqflops: bool = True        # the deeper StdPT_StdFT with >= the FLOPs per answer of PausePT_PauseFT
    device: str = "auto"        # auto: cuda if available, else cpu
    workers: int = 0            # parallel processes; 0: one per CPU core (cpu) or 8 (cuda)
    out_dir: str = "out_experiment"
    smoke: bool = False         # tiny steps and evaluation: checks the whole path in seconds


# ----------------------------------------------------------------------------- the task (pure)

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
    the paper's random pauses, through pause.insert_pauses, in every row."""
    T = cfg.block_size
    inputs, labels = [], []
    for _ in range(cfg.batch_size):
        row, lab = [], []
        while len(row) < T + 1:
            kind = document_kind(rng, cfg, pause_pt)
            i, l = document(*draw(rng, cfg.K, "train"), kind)
            row, lab = row + i, lab + l
        inputs.append(row[:T + 1])
        labels.append(lab[:T + 1])
    inputs, labels = torch.tensor(inputs), torch.tensor(labels)
    if pause_pt and cfg.pause_frac > 0:
        # Insert the pauses into the positions 0..T (with T + 1 marking a pause) and move inputs and
        # labels along the same way: a pmask document keeps its hidden targets wherever it lands.
        m_pt = pause.num_pretrain_pauses(cfg.pause_frac, T + 1)
        slots = pause.insert_pauses(torch.arange(T + 1).expand(cfg.batch_size, -1), m_pt, T + 1, generator=gen)
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


# ----------------------------------------------------------------------------- training

def make_model(cfg, n_layer, seed, device):
    torch.manual_seed(seed)  # StdPT and PausePT of one seed start from the same weights
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=TOK.vocab_size, n_layer=n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd)).to(device)


def train_steps(model, cfg, steps, lr, next_batch):
    """AdamW with linear warmup and cosine decay to 0 (train.lr_at); returns the last loss."""
    device = model.device
    opt = model.configure_optimizers(cfg.weight_decay, lr, device_type=device.type)
    warmup, loss = min(cfg.warmup, steps // 5), float("nan")
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup, 0.0)
        x, y = next_batch()
        _, loss = model(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return float(loss.detach()) if steps else float("nan")


def pretrain(cfg, pause_pt, seed, device, n_layer=None):
    model = make_model(cfg, n_layer or cfg.n_layer, seed, device)
    rng, gen = random.Random(f"pretrain/{seed}"), torch.Generator().manual_seed(seed)
    train_steps(model, cfg, cfg.pt_steps, cfg.lr, lambda: pretrain_batch(rng, cfg, pause_pt, gen))
    return model


def finetune(base, cfg, M, seed, where="append", filler_id=PAUSE_ID):
    """A copy of `base` finetuned with M_ft = M; every configuration of a seed sees the same problems."""
    model, rng = copy.deepcopy(base), random.Random(f"finetune/{seed}")
    train_steps(model, cfg, cfg.ft_steps, cfg.ft_lr,
                lambda: finetune_rows(problems(rng, cfg.K, cfg.batch_size, "train"), M, where, filler_id))
    return model


@torch.no_grad()
def accuracy(model, test, M, where="append", filler_id=PAUSE_ID):
    """Exact match of the whole answer "=c\\n" after M_inf = M pauses, teacher-forced in one pass
    with the pause and padding ids banned (as pause.pause_generate does). An answer is all right
    under greedy decoding exactly when every teacher-forced argmax is right."""
    model.eval()
    x, y = finetune_rows(test, M, where, filler_id)
    logits, _ = model(x.to(model.device))
    logits[..., PAUSE_ID] = float("-inf")
    logits[..., TOK.vocab_size:] = float("-inf")
    ok = (logits.argmax(-1).cpu() == y) | (y == pause.IGNORE)
    return ok.all(1).float().mean().item()


def flops_per_answer(model_config, K, M):
    """Forward FLOPs of one pass over prompt + M pauses + "=c" (the work of KV-cached decoding of
    the answer): 2 per parameter and token for the matmuls (output layer included), plus attention's
    QK^T and AV, 4 * n_embd * t at position t of every layer."""
    c, T = model_config, (K + 2) + M + 2
    with torch.random.fork_rng(devices=[]):  # counting parameters leaves the random state alone
        n = GPT(c).num_params()
    return 2 * n * T + 2 * c.n_layer * c.n_embd * T * (T + 1)


def deeper_n_layer(cfg):
    """The fewest layers for which a standard model without pauses spends at least the FLOPs per
    answer of the base model with M_ft pauses: the same extra compute, as depth."""
    base = GPTConfig(block_size=cfg.block_size, vocab_size=TOK.vocab_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd)
    target, n = flops_per_answer(base, cfg.K, cfg.M_ft), cfg.n_layer
    while flops_per_answer(replace(base, n_layer=n), cfg.K, 0) < target:
        n += 1
    return n


# ----------------------------------------------------------------------------- one job

def run_job(args):
    """One pretrained model of one seed and everything finetuned from it: kind 'StdPT', 'PausePT' or
    'deeper'. Returns a list of result rows."""
    cfg, kind, seed = args
    torch.set_num_threads(1)  # tiny matmuls: processes in parallel beat threads
    device = torch.device(cfg.device)
    t0, M = time.time(), cfg.M_ft
    test = problems(random.Random("test"), cfg.K, cfg.n_eval, "test")
    n_layer = deeper_n_layer(cfg) if kind == "deeper" else cfg.n_layer
    base = pretrain(cfg, kind == "PausePT", seed, device, n_layer)
    pt = "PausePT" if kind == "PausePT" else "StdPT"
    rows = []

    def add(name, model, m_ft, m_inf, where="append", filler="", filler_id=PAUSE_ID):
        rows.append(dict(name=name, seed=seed, n_layer=n_layer, M_ft=m_ft, M_inf=m_inf, where=where,
                         filler=filler, acc=accuracy(model, test, m_inf, where, filler_id),
                         flops=flops_per_answer(model.config, cfg.K, m_inf)))

    if kind == "deeper":
        add(f"StdPT_StdFT, {n_layer} layers (equal FLOPs)", finetune(base, cfg, 0, seed), 0, 0)
        return [dict(r, job_s=round(time.time() - t0, 1)) for r in rows]
    std_ft = finetune(base, cfg, 0, seed)
    add(f"{pt}_StdFT", std_ft, 0, 0)
    pause_ft = finetune(base, cfg, M, seed)
    add(f"{pt}_PauseFT", pause_ft, M, M)
    if cfg.minf_sweep and pt == "PausePT":
        for m_inf in range(2 * M + 1):
            if m_inf != M:
                add(f"{pt}_PauseFT, M_inf sweep", pause_ft, M, m_inf)
    if cfg.where == "prepend":
        add(f"{pt}_PauseFT, prepended", finetune(base, cfg, M, seed, "prepend"), M, M, "prepend")
    if cfg.filler_baseline and pt == "StdPT":
        add("StdPT_StdFT, '.' x M_ft at inference", std_ft, 0, M, filler=".", filler_id=DOT)
        add("StdPT_FillerFT ('.' instead of pauses)", finetune(base, cfg, M, seed, filler_id=DOT), M, M,
            filler=".", filler_id=DOT)
    return [dict(r, job_s=round(time.time() - t0, 1)) for r in rows]


# ----------------------------------------------------------------------------- statistics and report

def welch(a, b):
    """Welch's t for mean(a) - mean(b), with its Welch-Satterthwaite degrees of freedom."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:  # no spread at all: the sign of the difference is all there is
        diff = statistics.mean(a) - statistics.mean(b)
        return (math.copysign(math.inf, diff) if diff else 0.0), math.nan
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    return t, (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


def summarize(rows):
    """One line per (name, M_inf): accuracies over seeds, in the paper's order, then the ablations."""
    groups = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        groups.setdefault((r["name"], r["M_inf"]), []).append(r)
    order = {name: i for i, name in enumerate(CONFIGS)}
    lines = []
    for (name, m_inf), g in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][0], kv[0][1])):
        accs = [r["acc"] for r in g]
        lines.append(dict(name=name, n_layer=g[0]["n_layer"], M_ft=g[0]["M_ft"], M_inf=m_inf, flops=g[0]["flops"],
                          seeds=[r["seed"] for r in g], acc=accs, mean=statistics.mean(accs),
                          std=statistics.stdev(accs) if len(accs) > 1 else 0.0))
    return lines


def markdown(lines):
    out = ["| configuration | layers | M_ft | M_inf | MFLOPs / answer | accuracy % (mean ± std) | per seed |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in lines:
        out.append(f"| {s['name']} | {s['n_layer']} | {s['M_ft']} | {s['M_inf']} | {s['flops'] / 1e6:.2f} | "
                   f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} | {', '.join(f'{100 * a:.1f}' for a in s['acc'])} |")
    return "\n".join(out)


def minf_chart(lines, M_ft):
    """A text chart of PausePT_PauseFT accuracy against M_inf."""
    pts = sorted((s["M_inf"], s["mean"]) for s in lines if s["name"].startswith("PausePT_PauseFT")
                 and "prepend" not in s["name"])
    return "\n".join(f"M_inf {m:2d} |{'#' * round(40 * a):40s}| {100 * a:5.1f}%{'  (= M_ft)' if m == M_ft else ''}"
                     for m, a in pts)


def significance(lines, a="PausePT_PauseFT", b="StdPT_StdFT"):
    pick = {s["name"]: s for s in lines}
    if a not in pick or b not in pick or min(len(pick[a]["acc"]), len(pick[b]["acc"])) < 2:
        return None  # Welch's t needs two seeds of each
    t, dof = welch(pick[a]["acc"], pick[b]["acc"])
    diff = pick[a]["mean"] - pick[b]["mean"]
    pooled = math.sqrt((pick[a]["std"] ** 2 + pick[b]["std"] ** 2) / 2)
    in_std = diff / pooled if pooled else (math.copysign(math.inf, diff) if diff else 0.0)
    return dict(a=a, b=b, diff=diff, welch_t=t, dof=dof, diff_in_std=in_std)



def experiment(cfg):
    if cfg.smoke:
        cfg = replace(cfg, pt_steps=20, ft_steps=10, n_eval=50, batch_size=16, seeds=min(cfg.seeds, 2))
    if cfg.device == "auto":
        cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
    # seed by seed, so that a run cut short still holds whole seeds; the longest job of each first
    kinds = (["deeper"] if cfg.eqflops else []) + ["PausePT", "StdPT"]
    jobs = [(cfg, kind, cfg.seed + s) for s in range(cfg.seeds) for kind in kinds]
    workers = cfg.workers or (8 if cfg.device.startswith("cuda") else os.cpu_count() or 1)
    workers = min(workers, len(jobs))
    os.makedirs(cfg.out_dir, exist_ok=True)
    path, t0, rows = os.path.join(cfg.out_dir, "experiment.json"), time.time(), []
    print(f"{len(jobs)} jobs ({cfg.seeds} seeds x {kinds}) on {cfg.device} with {workers} process(es)")
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap_unordered(run_job, jobs) if pool else map(run_job, jobs)
        for job_rows in tqdm(results, total=len(jobs), desc="jobs"):
            rows += job_rows
            lines = summarize(rows)  # rewritten after every job: a cut-off run keeps what it has
            result = dict(config=asdict(cfg), lines=lines, rows=rows, significance=significance(lines),
                          deeper_n_layer=deeper_n_layer(cfg) if cfg.eqflops else None,
                          device=torch.cuda.get_device_name(0) if cfg.device.startswith("cuda") else "cpu",
                          workers=workers, torch=torch.__version__, wall_s=round(time.time() - t0, 1))
            write_json(result, path)
    finally:
        if pool:
            pool.close()
            pool.join()
    print(markdown(result["lines"]))
    sig = result["significance"]
    if sig:
        print(f"\n{sig['a']} - {sig['b']}: {100 * sig['diff']:+.1f} points, Welch t = {sig['welch_t']:.2f} "
              f"(dof {sig['dof']:.1f}), difference / pooled std = {sig['diff_in_std']:.2f}")
    if cfg.minf_sweep:
        print("\nPausePT_PauseFT accuracy against M_inf:\n" + minf_chart(result["lines"], cfg.M_ft))
    print(f"\nwall time {result['wall_s']:.0f} s on {result['device']} ({workers} processes); written to {path}")
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(ExperimentConfig):
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(f"--{f.name}", type={"int": int, "float": float, "str": str}.get(f.type, f.type),
                                default=f.default)
    cfg = ExperimentConfig(**vars(parser.parse_args(argv)))
    if not 1 <= cfg.K <= 9:
        parser.error(f"--K must be 1..9 (the count is one digit), got {cfg.K}")
    if cfg.where not in ("append", "prepend"):
        parser.error(f"--where must be append or prepend, got {cfg.where!r}")
    if cfg.M_ft < 1:
        parser.error("--M_ft must be >= 1 (the pauses of the PauseFT configurations)")
    longest = (cfg.K + 2) + (2 * cfg.M_ft if cfg.minf_sweep else cfg.M_ft) + 2
    if longest > cfg.block_size:
        parser.error(f"prompt ({cfg.K + 2}) + pauses + answer need {longest} positions, more than "
                     f"--block_size {cfg.block_size}; raise --block_size or lower --M_ft")
    if cfg.seeds < 1 or cfg.pt_steps < 0 or cfg.ft_steps < 0 or cfg.batch_size < 1 or cfg.n_eval < 1:
        parser.error("--seeds, --batch_size and --n_eval must be >= 1, --pt_steps and --ft_steps >= 0")
    for name in ("p_echo", "p_cot", "p_filler", "p_pmask"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            parser.error(f"--{name} must be a probability in [0, 1], got {getattr(cfg, name)}")
    if cfg.p_cot + cfg.p_filler > 1.0:
        parser.error(f"--p_cot + --p_filler must be <= 1 (the rest are direct documents), got "
                     f"{cfg.p_cot + cfg.p_filler}")
    if not 0.0 <= cfg.pause_frac < 1.0:
        parser.error(f"--pause_frac must be in [0, 1) (the paper uses 0.1), got {cfg.pause_frac}")
    return cfg


if __name__ == "__main__":
    experiment(parse_args())
