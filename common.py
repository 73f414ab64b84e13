"""
Helpers that train.py, finetune.py, experiment.py, bench.py and sample.py share, so that no script
imports another: the command line built from a config dataclass, device and dtype, DDP setup, the
learning-rate schedule, files written atomically, checkpoints, the checks of a train.py run before
it starts (out_dir, --resume, the model's shape), and downloads.
"""
import argparse
import bz2
import errno
import glob
import gzip
import inspect
import io
import json
import math
import os
import tempfile
import tokenize
import urllib.request
import zlib
from contextlib import nullcontext
from dataclasses import MISSING, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from model import GPT, GPTConfig, PRESETS, config_from_preset


# -----------------------------------------------------------------------------------------------
# The command line: one flag per field of a config dataclass, with the comment beside the field as
# its help text, so the documentation of a setting lives in exactly one place.

def field_comments(cls):
    """{field name: the comment on its line} from the source of a dataclass."""
    comments, source = {}, inspect.getsource(cls)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.line.strip()
            name = line.split(":", 1)[0].strip()
            if name.isidentifier() and not line.startswith("#"):
                comments[name] = tok.string.lstrip("# ").strip()
    return comments


def _int(text):
    """An integer flag that also accepts 200e9 (the token budgets are easier to read that way)."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def config_parser(cls, description, choices=None):
    """An argparse parser with a --flag for every field of the dataclass cls. choices: {field:
    allowed values} for settings with a finite set of values; they show in --help."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    comments, choices = field_comments(cls), choices or {}
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = comments.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if f.name in choices:
            help_text += f" (choices: {', '.join(map(str, choices[f.name]))})"
        help_text += " (default: %(default)s)"
        if f.type is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=_int if f.type is int else f.type,
                                default=default, choices=choices.get(f.name), help=help_text,
                                metavar=f.name.upper())
    return parser


# The ranges a numeric flag can be held to, for check_ranges.
RANGES = {">= 1": lambda v: v >= 1, ">= 0": lambda v: v >= 0, "in [0, 1)": lambda v: 0 <= v < 1,
          "> 0": lambda v: 0 < v < math.inf}


def check_ranges(cfg, ranges):
    """ranges: {range: "flag flag ..."}; the first flag of cfg outside its range (NaN is outside
    every range) is an error naming the flag, the range and the value."""
    for allowed, names in ranges.items():
        for name in names.split():
            if not RANGES[allowed](getattr(cfg, name)):
                raise SystemExit(f"--{name} must be {allowed}, got {getattr(cfg, name)}")


# -----------------------------------------------------------------------------------------------
# Device, dtype and DDP

def resolve_device(device):
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; an unavailable GPU is a clear error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise SystemExit(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this machine has no CUDA GPU (torch "
                         f"{torch.__version__}); use --device cpu or auto")
    return device


def resolve_dtype(dtype, device):
    """(dtype name, autocast context). 'auto' is bfloat16 on a GPU that has it, else float32.
    bf16 autocast runs the matmuls in bfloat16 while weights and optimizer state stay float32,
    which needs no loss scaling (unlike float16)."""
    device_type = torch.device(device).type
    if dtype == "auto":
        cuda_bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if cuda_bf16 else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"--dtype must be auto, float32 or bfloat16, got {dtype!r}")
    if dtype == "bfloat16":
        return dtype, torch.autocast(device_type, dtype=torch.bfloat16)
    return dtype, nullcontext()


def setup_ddp(device="auto"):
    """(rank, local_rank, world_size, device). DDP when torchrun set RANK and WORLD_SIZE, else one
    process. Each process of a node takes the GPU of its local rank; on CPU, gloo does the
    all-reduces and the processes share the cores."""
    device = resolve_device(device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, local_rank, world_size = (int(os.environ[k])
                                        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        use_cuda = device.startswith("cuda")
        if use_cuda:
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        else:  # the processes of a node share its cores
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return rank, local_rank, world_size, device
    return 0, 0, 1, device


def cleanup_ddp():
    if dist.is_initialized():
        dist.destroy_process_group()


# -----------------------------------------------------------------------------------------------
# The learning-rate schedule (as in nanoGPT and the GPT-3 paper)

def lr_at(step, max_steps, lr, warmup_steps, min_lr):
    """Linear warmup to lr over warmup_steps, then cosine decay to min_lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


# -----------------------------------------------------------------------------------------------
# Files written atomically: into a new temporary file beside the target, then renamed over it. A
# crash or a full disk mid-write leaves the previous file intact, and the temporary file is a
# fresh name (never an existing file or a planted symlink that the write would follow).

def write_error(path, e):
    """The SystemExit for a failed write of path: a full disk is said in those words."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return SystemExit(f"cannot write {path}: no space left on the disk; the previous version "
                          "of the file is intact. Free some space and rerun (with --resume for "
                          "training).")
    return SystemExit(f"cannot write {path}: {e.strerror or e}")


def atomic_write(path, write, mode="wb"):
    """Call write(f) on a temporary file in path's directory, then rename it to path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # mkstemp creates a new file with O_EXCL: it never opens an existing file or follows a link.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    umask = os.umask(0)  # reading the umask means setting it: it is put back at once
    os.umask(umask)
    try:
        with os.fdopen(fd, mode) as f:
            # mkstemp's file is private (0600); it gets the mode a plain open() would give, so
            # that a checkpoint or an exported model can be shared like the user's other files.
            os.fchmod(f.fileno(), 0o666 & ~umask)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise


def json_safe(obj):
    """obj with every NaN or infinite float replaced by None: NaN and Infinity are not JSON, and
    a file holding them breaks strict readers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(obj, path):
    """JSON written atomically, with non-finite numbers written as null."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def append_jsonl(obj, path):
    """One JSON line appended to a log. A write that fails part way (a full disk) is cut off
    again, so the log never ends in half a line."""
    data = (json.dumps(json_safe(obj), allow_nan=False) + "\n").encode()
    with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush on close
        size = f.tell()
        try:
            while data:  # one write may take only part of the bytes
                data = data[f.write(data):]
        except OSError as e:
            os.truncate(path, size)
            raise write_error(path, e) from e


def read_jsonl(path):
    """The rows of a JSON-lines log. A last line cut short (by a crash or a full disk) is dropped
    with a note; a bad line elsewhere is an error naming it."""
    with open(path) as f:
        lines = f.readlines()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines):
                raise SystemExit(f"{path}, line {i}: not valid JSON ({line[:60]!r}); "
                                 "fix or delete that line") from None
            print(f"note: {path}: dropped its last line, written only in part ({line[:60]!r})")
    return rows


# -----------------------------------------------------------------------------------------------
# Checkpoints: a dict of tensors and plain values, read with weights_only=True so that a
# malicious pickle cannot run code. train.py's are resumable (optimizer, loader, RNG state);
# finetune.py's hold the finetuned model and its finetune_config.

def save_checkpoint(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_kind(ckpt):
    """'pretraining' (train.py), 'finetuned' (finetune.py) or 'foreign' (anything else)."""
    if not isinstance(ckpt, dict) or not {"model", "model_config", "tokenizer"} <= ckpt.keys():
        return "foreign"
    if "finetune_config" in ckpt:
        return "finetuned"
    return "pretraining" if {"optimizer", "loader", "step"} <= ckpt.keys() else "foreign"


KINDS = {"pretraining": "train.py's, with optimizer and loader state", "finetuned": "finetune.py's"}


def read_checkpoint(path, device="cpu", kind=None):
    """The dict of a ckpt.pt written by train.py or finetune.py (of that kind, if given);
    anything else is refused, saying what was found there."""
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}; train one first with "
                         "`python train.py --out_dir DIR`")
    expected = "expected a ckpt.pt written by train.py or finetune.py"
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a damaged or foreign file fails in many ways inside the unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"{path}: not a checkpoint this project can read ({first}); "
                         f"{expected}") from None
    found = checkpoint_kind(ckpt)
    if found == "foreign":
        found = (f"a dict with the keys {', '.join(sorted(map(str, ckpt))[:8])}"
                 if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise SystemExit(f"{path}: not a checkpoint of this project: found {found}; {expected} "
                         "(a Hugging Face GPT-2 directory goes to --init_from)")
    if kind is not None and found != kind:
        raise SystemExit(f"{path} is a {found} checkpoint ({KINDS[found]}), but a {kind} one "
                         f"({KINDS[kind]}) is needed here")
    return ckpt


def load_checkpoint(path, device="cpu"):
    """(model, tokenizer, checkpoint dict) from a ckpt.pt written by train.py or finetune.py."""
    from data import get_tokenizer  # data imports this module
    ckpt = read_checkpoint(path, device)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), get_tokenizer(ckpt["tokenizer"]), ckpt


def load_model(ckpt_path, init_from, device="cpu"):
    """(model, tokenizer, pause_frac) to finetune or sample from: a checkpoint of train.py or
    finetune.py (StdPT or PausePT by its pause_frac), or GPT-2's weights (a StdPT model)."""
    from data import get_tokenizer  # data and gpt2 import this module
    import gpt2
    if init_from:
        tok = get_tokenizer("gpt2")  # GPT-2's vocabulary and <|pause|>, whose row gpt2.py adds
        return gpt2.from_pretrained(init_from, tok.vocab_size).to(device), tok, 0.0
    try:  # a foreign file is refused, saying what it holds and what a checkpoint holds
        model, tok, ckpt = load_checkpoint(ckpt_path, device)
    except SystemExit as e:
        raise SystemExit(f"--ckpt: {e}") from None
    if ckpt.get("pause_id") is None or tok.pause_id >= model.config.vocab_size:
        raise SystemExit(f"--ckpt {ckpt_path}: the model's vocabulary ({model.config.vocab_size} "
                         f"ids) has no pause token (the {tok.name} tokenizer's <|pause|> is id "
                         f"{tok.pause_id}); train.py's vocabulary has it")
    return model, tok, ckpt.get("pause_frac", 0.0)


# -----------------------------------------------------------------------------------------------
# A train.py run: its out_dir, checked before any work and readied once it starts, and what the
# weights it starts from fix: the model's shape (GPT-2's for --init_from, the checkpoint's for
# --resume), and for --resume also the tokenizer and pause_frac.

def check_out_dir(out_dir, resume, overwrite):
    """Refuse, before any work, what would lose a run: an --out_dir that is a file, --resume
    with nothing to resume, or a new run over a checkpoint without --overwrite."""
    path = os.path.join(out_dir, "ckpt.pt")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SystemExit(f"--out_dir {out_dir} is a file, not a directory; choose another")
    if resume and overwrite:
        raise SystemExit(f"--resume continues {path}, --overwrite deletes it: give one of them")
    if resume and not os.path.isfile(path):
        raise SystemExit(f"--resume: no checkpoint at {path}; run without --resume to start "
                         "training")
    if not resume and not overwrite and os.path.exists(path):
        raise SystemExit(f"{path} exists: give --resume to continue that run, --overwrite to "
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
    import gpt2  # gpt2 imports this module
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
            raise SystemExit(f"{source} has {k}={have} but this run has {k}={v} ({flag}); the "
                             "weights fix the model's shape: leave the flag out")
    return model_config


def check_resume(ckpt, path, cfg, tok_name, world_size, master):
    """Refuse a checkpoint of another tokenizer or pause_frac, naming the field; a change of the
    batch or world size is allowed, with a note."""
    for key, saved, value in (("tokenizer", ckpt["tokenizer"], tok_name),
                              ("pause_frac", ckpt["pause_frac"], cfg.pause_frac)):
        if saved != value:
            raise SystemExit(f"--resume: {path} was made with {key}={saved}, this run has "
                             f"{key}={value}; use the same data and flags, or another --out_dir")
    then = ckpt["config"]["batch_size"], ckpt.get("world_size", world_size)
    if then != (cfg.batch_size, world_size) and master:
        print(f"note: resuming with batch_size {cfg.batch_size} x {world_size} processes; the "
              f"checkpoint was written with {then[0]} x {then[1]}. The data continues where it "
              "stopped, but the steps are no longer those of one uninterrupted run.")


# -----------------------------------------------------------------------------------------------
# Downloads, with the standard library only: HTTPS, resuming a partial file with an HTTP Range
# request, and an integrity check of compressed files before the final rename.

def _check_compressed(path):
    """Read a .gz / .bz2 file to its end: a truncated or damaged file raises here."""
    name = path.name.removesuffix(".part")
    opener = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") else None
    if opener is None:
        return
    with opener(path, "rb") as f:
        while f.read(1 << 22):
            pass


def download(url, dest, retries=3, timeout=60):
    """Download url to dest (skipped if dest exists). Bytes arrive in dest + '.part'; an interrupted
    download resumes from there. A compressed file that fails its integrity check is deleted and
    fetched again, at most `retries` times in all."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "pause-data/1.0", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as r:
                if have and r.status != 206:
                    have = 0  # the server ignored the Range request: start over
                length = r.headers.get("Content-Length")
                total = have + int(length) if length else None
                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name)
                with open(part, "ab" if have else "wb") as f, bar:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            if total is not None and part.stat().st_size != total:
                raise ConnectionError(f"got {part.stat().st_size} of {total} bytes")
        except urllib.error.HTTPError as e:
            if e.code != 416:  # 416: nothing left after the bytes we have, i.e. complete
                raise SystemExit(f"download of {url} failed: HTTP {e.code} {e.reason}")
        except (urllib.error.URLError, OSError) as e:
            print(f"download of {url} interrupted ({e}); attempt {attempt}/{retries}, resuming")
            continue
        try:
            _check_compressed(part)
        except (OSError, EOFError, zlib.error) as e:
            print(f"{part}: corrupt download ({e}); deleted, attempt {attempt}/{retries}")
            part.unlink()
            continue
        os.replace(part, dest)
        return dest
    raise SystemExit(f"could not download {url} intact after {retries} attempts; run the command "
                     f"again (a partial {part.name} is resumed)")


# Dense bf16 peak FLOP/s from the datasheets, for MFU when --peak_flops is not given.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
              "L4": 121e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12, "3090": 71e12}


def peak_flops_of(device):
    if torch.device(device).type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)
