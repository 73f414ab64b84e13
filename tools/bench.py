"""
How fast is pause-pretraining? One run measures and prints a table of:

  1. the data loader alone: tokens/s on one CPU core, pause_frac 0 and 0.1;
  2. a training step of a model preset: tokens/s, ms per step, MFU against a matmul peak measured
     in the same run, peak memory, pause_frac 0 and 0.1, and the same step with the batch already
     on the device (so any wait for data shows up as a difference);
  3. generation: KV-cached against full re-run decoding for a pause-inference prompt, and prompts
     of mixed lengths decoded as one batch against one at a time.

Each target is a ratio or a share taken within this one run, printed with PASS/FAIL next to it.

    python -m tools.bench                               # tiny preset on the CPU, a few minutes
    python -m tools.bench --preset 130m --json out.json # on a GPU: bf16, torch.compile
"""
import gc
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

import pause
from data import PretrainLoader, to_device
from model import GPT, PRESETS, config_from_preset
from tools.common import (UserError, check_ranges, parse_config, require, resolve_device,
                          resolve_dtype, write_json)

# The bench needs only the vocabulary's size and the pause id of each tokenizer (data.py), not its
# merge files: a GPU machine without internet cannot download GPT-2's. tests/test_bench.py checks
# these against the real tokenizers.
VOCAB = {"byte": dict(vocab_size=258, pause_id=257), "gpt2": dict(vocab_size=50258, pause_id=50257)}
# Micro-batch per preset. 1b at context 2048 in bf16 with AdamW needs ~16 bytes per parameter plus
# activations; 8 fits a 141 GB H200, and an out-of-memory error halves it and tries again.
BATCH_SIZE = {"tiny": 8, "130m": 8, "1b": 8}
# The generation tests run at up to the paper's context, whatever the preset's (the tiny model's
# position table is grown for them); longer prompts and more pauses are refused.
GENERATE_CONTEXT = 2048
# The targets; each compares figures measured in the same run.
LOADER_TOKENS_PER_S = 20e6       # per CPU core, with pause insertion
PAUSE_STEP_COST = 0.03           # pause_frac 0.1 against 0: at most 3% more time per step
MFU_TARGET = {"130m": 0.60, "1b": 0.70}  # on an H100 or H200 at context 2048, bf16, torch.compile
DATA_WAIT = 0.02                 # step with the loader against a preloaded batch: no GPU wait
KV_SPEEDUP = 10.0                # KV-cached against full re-run, 256 new tokens after 1024
BATCHED_SPEEDUP = {("tiny", "cpu"): 5.0, ("130m", "cuda"): 20.0}  # 64 prompts against one by one
ONE_BY_ONE = 8                   # prompts decoded one at a time for the batch-1 rate


PARTS = ("loader", "train", "generate")


@dataclass
class BenchConfig:
    preset: str = "tiny"          # the model's shape
    device: str = "auto"          # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    batch_size: int = 0           # training micro-batch; 0: the preset's default
    block_size: int = 0           # training context; 0: the preset's
    compile: bool = None          # torch.compile the model; unset: on for cuda, off elsewhere
    dtype: str = "auto"           # auto: bfloat16 on cuda, float32 on cpu
    steps: int = 0                # timed steps per measurement; 0: 20 on cuda, 3 on cpu
    warmup: int = 0               # untimed steps first (compilation); 0: 5 on cuda, 1 on cpu
    rounds: int = 0               # repeats of each training measurement; 0: 2 on cuda, 3 on cpu
    what: str = "loader,train,generate"  # a comma-separated subset of loader,train,generate
    pause_frac: float = 0.1       # training: the paper's M_pt = 10% of the sequence
    tokenizer: str = "auto"       # auto: byte for tiny, gpt2 otherwise
    prompt_len: int = 1024        # generation: the prompt of the KV-cache test, in tokens
    num_pauses_eval: int = 10     # generation: M_inf pauses after each prompt
    new_tokens: int = 256         # generation: tokens decoded after the pauses
    batch_prompts: int = 64       # batched decoding: prompts of mixed lengths in one batch
    batch_prompt_len: int = 0     # batched decoding: the longest prompt; 0: context / 4
    loader_seconds: float = 1.0   # how long each loader measurement runs, in (0, 3600]
    json: str = ""                # also write the figures to this file
    seed: int = 0                 # for the synthetic tokens and the model's initialization

    def check(self):
        parts = [w.strip() for w in self.what.split(",")]
        require(all(w in PARTS for w in parts),
                f"--what {self.what!r}: use a comma-separated subset of loader,train,generate")
        resolve_dtype(self.dtype, resolve_device(self.device))  # names --device or --dtype
        check_ranges(self, {">= 0": "batch_size block_size steps warmup rounds num_pauses_eval "
                                    "batch_prompt_len seed",
                            ">= 1": "prompt_len new_tokens batch_prompts"})
        require(0.0 < self.loader_seconds <= 3600, "--loader_seconds must be in (0, 3600] "
                f"(each loader measurement runs that long), got {self.loader_seconds}")
        require(0.0 < self.pause_frac < 1.0, "--pause_frac must be in (0, 1) (the paper uses "
                f"0.1), got {self.pause_frac}")
        context = max(self.block_size or PRESETS[self.preset]["block_size"], GENERATE_CONTEXT)
        longest = {"prompt_len": self.prompt_len, "batch_prompt_len": self.batch_prompt_len
                   or PRESETS[self.preset]["block_size"] // 4}
        for flag, length in longest.items():
            require(length + self.num_pauses_eval + self.new_tokens <= context,
                    f"--{flag} {length} + --num_pauses_eval {self.num_pauses_eval} + "
                    f"--new_tokens {self.new_tokens} is more than the generation test's "
                    f"context of {context}; ask for fewer")
        if self.json:  # checked now: a missing folder must not lose a finished benchmark
            folder = os.path.dirname(os.path.abspath(self.json))
            require(not os.path.isdir(self.json), f"--json {self.json} is a directory; give a "
                    "file name")
            require(os.path.isdir(folder), f"--json {self.json}: the directory {folder} does "
                    "not exist; create it first")
            require(os.access(folder, os.W_OK | os.X_OK), f"--json {self.json}: the directory "
                    f"{folder} is not writable")


def settle(cfg):
    """The config with its 'auto' and 0 settings replaced by what this machine and preset use."""
    device = resolve_device(cfg.device)
    cuda = device.startswith("cuda")
    preset = PRESETS[cfg.preset]
    return replace(
        cfg, device=device,
        dtype=resolve_dtype(cfg.dtype, device)[0],
        compile=cuda if cfg.compile is None else cfg.compile,
        tokenizer=("byte" if cfg.preset == "tiny" else "gpt2") if cfg.tokenizer == "auto"
        else cfg.tokenizer,
        what=",".join(w.strip() for w in cfg.what.split(",")),
        batch_size=cfg.batch_size or BATCH_SIZE[cfg.preset],
        block_size=cfg.block_size or preset["block_size"],
        steps=cfg.steps or (20 if cuda else 3),
        rounds=cfg.rounds or (2 if cuda else 3),
        warmup=cfg.warmup or (5 if cuda else 1),
        # Evaluation-sized prompts (a question, a passage), as finetune.py decodes them in batches.
        batch_prompt_len=cfg.batch_prompt_len or preset["block_size"] // 4)


CHOICES = {"preset": sorted(PRESETS), "dtype": ["auto", "float32", "bfloat16"],
           "tokenizer": ["auto", *VOCAB]}


def parse_args(argv=None):
    return settle(parse_config(BenchConfig, __doc__, argv, CHOICES))


# -----------------------------------------------------------------------------------------------
# Helpers


def sync(device):
    # CUDA runs asynchronously: a clock read is only meaningful once the queued work has finished.
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def synthetic_tokens(num_tokens, vocab_size, pause_id, seed):
    """Random token ids (never the pause), uint16 like the pretraining shards: the speed of the
    loader and the model does not depend on what the tokens say."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, min(vocab_size, pause_id), size=num_tokens, dtype=np.uint16)


def measure_peak_flops(device, dtype, seconds=0.3):
    """FLOP/s of one large square matmul in the training dtype: the peak that MFU is measured
    against (8192^3 on a GPU; 1024^3 on a CPU, where it is the fp32 peak of the threads in use)."""
    n = 8192 if str(device).startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):  # warm up: kernel selection, GPU clocks
        a @ b
    sync(device)
    t0 = time.perf_counter()
    a @ b
    sync(device)
    reps = max(3, math.ceil(seconds / (time.perf_counter() - t0)))
    best = 0.0
    for _ in range(2):  # the better of two rounds: the first may still be raising the clocks
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def make_model(cfg, **overrides):
    mcfg = config_from_preset(cfg.preset, VOCAB[cfg.tokenizer]["vocab_size"], **overrides)
    torch.manual_seed(cfg.seed)
    with torch.device(cfg.device):  # initialize on the device: a 1B model's init is slow on a CPU
        return GPT(mcfg)


# -----------------------------------------------------------------------------------------------
# 1. The loader alone


def bench_loader(cfg, tokens, pause_frac):
    """Tokens/s of PretrainLoader.next_batch on one CPU core (torch limited to one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = PretrainLoader(tokens, cfg.batch_size, cfg.block_size, pause_frac=pause_frac,
                                pause_id=VOCAB[cfg.tokenizer]["pause_id"], seed=cfg.seed)
        loader.next_batch()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < cfg.loader_seconds:
            x, _ = loader.next_batch()
            n += x.numel()
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


# -----------------------------------------------------------------------------------------------
# 2. The training step


def run_steps(model, optimizer, get_batch, batch, steps, ctx, device):
    """`steps` training steps as train.py takes them; returns (seconds per step, seconds per step
    spent fetching batches, the last loss, the batch fetched for the next step). Nothing reads a
    GPU result inside the loop, so the CPU queues work ahead and fetches the next batch while the
    GPU is still busy with the forward pass (as nanoGPT does)."""
    x, y = batch
    fetch = 0.0
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with ctx:
            _, loss = model(x, y)
        t = time.perf_counter()
        x, y = get_batch()
        fetch += time.perf_counter() - t
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - t0) / steps, fetch / steps, loss.item(), (x, y)


def bench_train(cfg, tokens, batch_size, peak_flops):
    """Time the training step with the loader at pause_frac 0 and cfg.pause_frac, and with one
    batch kept on the device. The three runs take turns for cfg.rounds rounds; the fastest round of
    each counts (the least disturbed by whatever else the machine does)."""
    device, cuda = cfg.device, cfg.device.startswith("cuda")
    pause_id = VOCAB[cfg.tokenizer]["pause_id"]
    model = make_model(cfg, block_size=cfg.block_size)
    optimizer = model.configure_optimizers(0.1, 3e-4, (0.9, 0.95), "cuda" if cuda else "cpu")
    step_model = torch.compile(model) if cfg.compile else model
    _, ctx = resolve_dtype(cfg.dtype, device)

    loaders = {f: PretrainLoader(tokens, batch_size, cfg.block_size, pause_frac=f,
                                 pause_id=pause_id, seed=cfg.seed) for f in (0.0, cfg.pause_frac)}
    getters = {f"pause_frac {f:g}": (lambda ld=ld: to_device(*ld.next_batch(), device))
               for f, ld in loaders.items()}
    fixed = getters[f"pause_frac {cfg.pause_frac:g}"]()
    getters["preloaded batch"] = lambda: fixed

    t0 = time.perf_counter()
    run_steps(step_model, optimizer, getters["preloaded batch"], fixed, cfg.warmup, ctx, device)
    warmup_s = time.perf_counter() - t0
    results = {name: dict(ms_per_step=math.inf, peak_mem_gb=None) for name in getters}
    bar = tqdm(total=cfg.rounds * len(getters), desc=f"train {cfg.preset}", leave=False)
    names = list(getters)
    for i in range(cfg.rounds):
        # A different order each round: no configuration is always first.
        for name in names[i % 3:] + names[:i % 3]:
            get = getters[name]
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            step_s, fetch_s, loss, _ = run_steps(step_model, optimizer, get, get(), cfg.steps, ctx,
                                                 device)
            r = results[name]
            if step_s * 1e3 < r["ms_per_step"]:
                r.update(ms_per_step=step_s * 1e3, fetch_share=fetch_s / step_s, loss=loss)
            if cuda:  # the CPU has no such counter; its figure stays None
                mem = torch.cuda.max_memory_allocated(device) / 1e9
                r["peak_mem_gb"] = max(r.get("peak_mem_gb") or 0.0, mem)
            bar.update()
    bar.close()
    tokens_per_step = batch_size * cfg.block_size
    for r in results.values():
        r["tokens_per_s"] = tokens_per_step / (r["ms_per_step"] / 1e3)
        r["mfu"] = model.estimate_mfu(r["tokens_per_s"], peak_flops, cfg.block_size)
    info = dict(batch_size=batch_size, block_size=cfg.block_size, tokens_per_step=tokens_per_step,
                params=model.num_params(), flops_per_token=model.flops_per_token(cfg.block_size),
                warmup_s=warmup_s, real_tokens_frac=loaders[cfg.pause_frac].real_tokens /
                max(1, loaders[cfg.pause_frac].real_tokens + loaders[cfg.pause_frac].pause_tokens))
    return results, info


def bench_train_fitting(cfg, tokens, peak_flops):
    """bench_train, halving the micro-batch after each out-of-memory error."""
    batch_size = cfg.batch_size
    while True:
        try:
            return bench_train(cfg, tokens, batch_size, peak_flops)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            print(f"out of memory at batch_size {batch_size}; trying {batch_size // 2}")
        # Outside the except block the traceback, and with it the model, has been let go.
        batch_size //= 2
        gc.collect()
        torch.cuda.empty_cache()
        torch.compiler.reset()  # recompile for the new shape instead of a dynamic-shape graph


# -----------------------------------------------------------------------------------------------
# 3. Generation


@torch.no_grad()
def bench_generate(cfg):
    """Pause-inference, greedy, pause banned: one prompt with and without the KV cache; then
    cfg.batch_prompts prompts of mixed lengths decoded as one left-padded batch against one by one
    (pause.pause_generate given the whole list, and given each prompt alone)."""
    pause_id = VOCAB[cfg.tokenizer]["pause_id"]
    need = max(cfg.prompt_len, cfg.batch_prompt_len) + cfg.num_pauses_eval + cfg.new_tokens
    model = make_model(cfg, block_size=max(need, PRESETS[cfg.preset]["block_size"]))
    model.to(getattr(torch, cfg.dtype)).eval()
    g = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(0, pause_id, (cfg.prompt_len,), generator=g)
    idx = pause.append_pauses(prompt, cfg.num_pauses_eval, pause_id).to(cfg.device).unsqueeze(0)
    out, res = {}, {}
    for use_cache in (True, False):
        name = "kv_cache" if use_cache else "full_rerun"
        model.generate(idx, 4, temperature=0.0, banned_ids={pause_id}, use_cache=use_cache)  # warm
        sync(cfg.device)
        t0 = time.perf_counter()
        out[name] = model.generate(idx, cfg.new_tokens, temperature=0.0, banned_ids={pause_id},
                                   use_cache=use_cache)
        sync(cfg.device)
        res[name + "_tokens_per_s"] = cfg.new_tokens / (time.perf_counter() - t0)
    res["speedup"] = res["kv_cache_tokens_per_s"] / res["full_rerun_tokens_per_s"]
    # In float32 both paths pick the same tokens; in bf16 rounding may flip a near-tie.
    res["same_tokens"] = bool(torch.equal(out["kv_cache"], out["full_rerun"]))
    res["prompt_tokens"] = idx.size(1)

    # Prompt lengths spread over [batch_prompt_len / 4, batch_prompt_len], in random order.
    lens = torch.randint(max(1, cfg.batch_prompt_len // 4), cfg.batch_prompt_len + 1,
                         (cfg.batch_prompts,), generator=g).tolist()
    prompts = [torch.randint(0, pause_id, (n,), generator=g).tolist() for n in lens]

    def decode(p):  # both ways take the prompt processing and the decoding of every new token
        return pause.pause_generate(model, p, cfg.num_pauses_eval, pause_id, cfg.new_tokens)
    decode(prompts[:2])  # warm up
    sync(cfg.device)
    t0 = time.perf_counter()
    batched = decode(prompts)
    sync(cfg.device)
    res["batched_tokens_per_s"] = cfg.batch_prompts * cfg.new_tokens / (time.perf_counter() - t0)
    # A rate needs only a few of the prompts one by one: every k-th by length, to span them all.
    order = sorted(range(cfg.batch_prompts), key=lens.__getitem__)
    some = order[::max(1, cfg.batch_prompts // ONE_BY_ONE)][:ONE_BY_ONE]
    t0 = time.perf_counter()
    single = {i: decode([prompts[i]])[0] for i in some}
    sync(cfg.device)
    res["batch1_tokens_per_s"] = len(some) * cfg.new_tokens / (time.perf_counter() - t0)
    res["batched_speedup"] = res["batched_tokens_per_s"] / res["batch1_tokens_per_s"]
    res["batched_same_tokens"] = all(single[i] == batched[i] for i in some)
    res["batched_prompt_lens"] = [min(lens), max(lens)]
    return res


# -----------------------------------------------------------------------------------------------
# The report


def checks(cfg, figures, device_name):
    """Each target with its figure; passed is None where the target does not apply."""
    rows = []
    ld, tr, gen = figures.get("loader"), figures.get("train"), figures.get("generate")
    pf = f"pause_frac {cfg.pause_frac:g}"
    cuda = cfg.device.startswith("cuda")
    if ld:
        v = ld[pf]
        rows.append(dict(name=f"loader tokens/s per core, {pf}", value=v,
                         target=f">= {LOADER_TOKENS_PER_S / 1e6:g}M",
                         passed=v >= LOADER_TOKENS_PER_S))
    if tr:
        r = tr["results"]
        cost = r[pf]["ms_per_step"] / r["pause_frac 0"]["ms_per_step"] - 1
        rows.append(dict(name=f"step time, {pf} against pause_frac 0", value=cost,
                         target=f"<= +{PAUSE_STEP_COST:.0%}", passed=cost <= PAUSE_STEP_COST))
        big_gpu = cuda and any(k in device_name for k in ("H100", "H200"))
        mfu = r["pause_frac 0"]["mfu"]
        applies = (big_gpu and cfg.preset in MFU_TARGET and cfg.block_size == 2048
                   and cfg.compile and cfg.dtype == "bfloat16")
        target = MFU_TARGET.get(cfg.preset)
        rows.append(dict(name="MFU, pause_frac 0", value=mfu,
                         target=f">= {target:.0%} on H100/H200" if target else "none here",
                         passed=mfu >= target if applies else None))
        wait = r[pf]["ms_per_step"] / r["preloaded batch"]["ms_per_step"] - 1
        rows.append(dict(name=f"step with the loader ({pf}) against a preloaded batch",
                         value=wait, target=f"<= +{DATA_WAIT:.0%} (GPU never waits)",
                         passed=wait <= DATA_WAIT if cuda else None))
    if gen:
        applies = cfg.prompt_len == 1024 and cfg.new_tokens == 256
        rows.append(dict(name=f"KV-cached / full re-run decoding, {cfg.new_tokens} after "
                         f"{cfg.prompt_len}", value=gen["speedup"], target=f">= {KV_SPEEDUP:g}x",
                         passed=gen["speedup"] >= KV_SPEEDUP if applies else None))
        target = BATCHED_SPEEDUP.get((cfg.preset, "cuda" if cuda else "cpu"))
        quarter = PRESETS[cfg.preset]["block_size"] // 4
        applies = target is not None and cfg.batch_prompts == 64 and cfg.batch_prompt_len == quarter
        rows.append(dict(name=f"batched / batch-1 decoding, {cfg.batch_prompts} prompts",
                         value=gen["batched_speedup"],
                         target=f">= {target:g}x" if target else "none here",
                         passed=gen["batched_speedup"] >= target if applies else None))
    return rows


def fmt_rate(v):
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.1f}"


def fmt_check(row):
    v, name = row["value"], row["name"]
    text = (f"{v:+.1%}" if name.startswith("step") else f"{v:.1%}" if name.startswith("MFU")
            else f"{v:.1f}x" if name.startswith(("KV", "batched")) else fmt_rate(v))
    result = "n/a" if row["passed"] is None else "PASS" if row["passed"] else "FAIL"
    return f"| {name} | {text} | {row['target']} | {result} |"


def report(cfg, figures):
    env, pf = figures["env"], f"pause_frac {cfg.pause_frac:g}"
    lines = [f"## tools.bench: preset {cfg.preset} on {env['device_name']}", "",
             f"torch {env['torch']}, {cfg.dtype}, compile {'on' if cfg.compile else 'off'}, "
             f"tokenizer {cfg.tokenizer} (vocab {VOCAB[cfg.tokenizer]['vocab_size']}), "
             f"{env['cpu']}", ""]
    if "peak_flops" in figures:
        lines += [f"Measured peak: {figures['peak_flops'] / 1e12:.3g} TFLOP/s "
                  f"({figures['peak_what']}). MFU = flops_per_token(T) * tokens/s / peak, "
                  "flops_per_token = 6 N + 12 L d T (N parameters without position embeddings, "
                  "PaLM appendix B).", ""]
    lines += [f"| part | measurement | pause_frac 0 | {pf} | preloaded batch |",
              "| --- | --- | --- | --- | --- |"]
    if "loader" in figures:
        ld = figures["loader"]
        lines.append(f"| loader | tokens/s per CPU core ({cfg.batch_size} x {cfg.block_size}) | "
                     f"{fmt_rate(ld['pause_frac 0'])} | {fmt_rate(ld[pf])} | |")
    if "train" in figures:
        tr, info = figures["train"]["results"], figures["train"]["info"]
        names = ["pause_frac 0", pf, "preloaded batch"]
        shape = f"{info['batch_size']} x {info['block_size']}"
        for label, key, f in [(f"ms per step ({shape})", "ms_per_step", "{:.1f}"),
                              ("tokens/s (pauses included)", "tokens_per_s", None),
                              ("MFU", "mfu", "{:.1%}"),
                              ("share of step in next_batch + copy", "fetch_share", "{:.1%}"),
                              ("peak memory GB", "peak_mem_gb", "{:.2f}"),
                              ("last loss", "loss", "{:.3f}")]:
            cells = ["n/a" if tr[n][key] is None else fmt_rate(tr[n][key]) if f is None
                     else f.format(tr[n][key]) for n in names]
            lines.append(f"| train | {label} | " + " | ".join(cells) + " |")
    if "generate" in figures:
        g = figures["generate"]
        yes = {True: "yes", False: "no"}
        lo, hi = g["batched_prompt_lens"]
        lines.append(f"| generate | tokens/s, KV cache / full re-run ({g['prompt_tokens']}-token "
                     f"prompt with {cfg.num_pauses_eval} pauses, {cfg.new_tokens} new; same "
                     f"tokens: {yes[g['same_tokens']]}) | "
                     f"{fmt_rate(g['kv_cache_tokens_per_s'])} | "
                     f"{fmt_rate(g['full_rerun_tokens_per_s'])} | |")
        lines.append(f"| generate | tokens/s, batched / batch-1 ({cfg.batch_prompts} prompts of "
                     f"{lo}-{hi} tokens + {cfg.num_pauses_eval} pauses, {cfg.new_tokens} new; "
                     f"same tokens: {yes[g['batched_same_tokens']]}) | "
                     f"{fmt_rate(g['batched_tokens_per_s'])} | "
                     f"{fmt_rate(g['batch1_tokens_per_s'])} | |")
    lines += ["", "| target | figure | target | check |", "| --- | --- | --- | --- |"]
    lines += [fmt_check(r) for r in figures["checks"]]
    if "train" in figures:
        info = figures["train"]["info"]
        lines += ["", f"{info['params'] / 1e6:.1f}M parameters (without position embeddings), "
                  f"{info['flops_per_token'] / 1e9:.3g} GFLOP per token; warmup "
                  f"({cfg.warmup} steps{', compilation included' if cfg.compile else ''}) "
                  f"{info['warmup_s']:.1f} s; {cfg.steps} timed steps x {cfg.rounds} rounds each."]
    return "\n".join(lines)


def bench(cfg):
    """Run the parts in cfg.what; returns the figures (the dict --json writes)."""
    cuda = cfg.device.startswith("cuda")
    if cuda:
        # Only fp32 matmuls are affected (bf16 autocast covers the model's); as in nanoGPT.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name(cfg.device) if cuda else f"CPU ({threads} threads)"
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    figures = dict(config=asdict(cfg),
                   env=dict(device_name=device_name, torch=torch.__version__, cpu=cpu))
    what = cfg.what.split(",")
    v = VOCAB[cfg.tokenizer]
    tokens = None
    if "loader" in what or "train" in what:
        tokens = synthetic_tokens(2 ** 23, v["vocab_size"], v["pause_id"], cfg.seed)
    if "loader" in what:
        figures["loader"] = {f"pause_frac {f:g}": bench_loader(cfg, tokens, f)
                             for f in (0.0, cfg.pause_frac)}
    if "train" in what:
        figures["peak_flops"] = measure_peak_flops(cfg.device, getattr(torch, cfg.dtype))
        figures["peak_what"] = (f"{'8192' if cuda else '1024'}^3 {cfg.dtype} matmul on "
                                f"{'the GPU' if cuda else f'{threads} CPU threads'}")
        results, info = bench_train_fitting(cfg, tokens, figures["peak_flops"])
        figures["train"] = dict(results=results, info=info)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if "generate" in what:
        figures["generate"] = bench_generate(cfg)
    figures["checks"] = checks(cfg, figures, device_name)
    return figures


def main(argv=None):
    cfg = parse_args(argv)
    figures = bench(cfg)
    print(report(cfg, figures))
    if cfg.json:
        try:
            write_json(figures, cfg.json)
        except UserError as e:  # a disk that filled up during the run: one line naming the file
            raise SystemExit(f"bench: error: {e}")
    return figures


if __name__ == "__main__":
    main()
