"""
Helpers that every script shares; this module imports nothing of the project, so that any module
may use it: the command line built from a config dataclass and checked at the door, device and
dtype, DDP setup, the learning-rate schedule, run directories with one owner, files written
atomically, and downloads.
"""
import argparse
import bz2
import errno
import functools
import glob
import gzip
import inspect
import io
import json
import math
import os
import socket
import sys
import tempfile
import time
import tokenize
import urllib.request
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import MISSING, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm



# -----------------------------------------------------------------------------------------------
# The command line: one flag per field of a config dataclass, with the comment beside the field as
# its help text, so the documentation of a setting lives in exactly one place.
#
# Checks at the door: each script's config has a check() that refuses, before any work, what its
# flags and files cannot mean, raising UserError with a message that names the flag or file and
# says what to do. Library code trusts its callers. A UserError that surfaces later (a damaged
# shard, a full disk) is turned into the same one-line message by the script's main().

class UserError(ValueError):
    """A flag, file or setting that a run cannot use; the message names it and says what to do."""


def require(ok, message):
    """The door's check: a UserError with the message unless ok."""
    if not ok:
        raise UserError(message)


@functools.cache  # getsource parses the whole module: 65 ms a call
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


def integer(text):
    """An integer flag, also written 200e9 (token budgets read better that way). inf, nan and
    numbers beyond 64 bits are refused: no setting of this project means them."""
    try:
        value = int(text)
    except ValueError:
        value = float(text)  # a ValueError here is argparse's "invalid int value"
        if not math.isfinite(value) or value != int(value):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        value = int(value)
    if abs(value) >= 2 ** 63:
        raise argparse.ArgumentTypeError(f"{text} does not fit in 64 bits")
    return value


def number(text):
    """A number flag; inf and nan are refused (a NaN would pass every later range check)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


TYPES = {int: integer, float: number}  # how a flag of the field's type is read;
# argparse names the function in its message: "invalid number value: ''"


class OneLineParser(argparse.ArgumentParser):
    """argparse with a refusal in one line, without the usage (pages long for a training
    script) before it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def config_parser(cls, description, choices=None):
    """An argparse parser with a --flag for every field of the dataclass cls. choices: {field:
    allowed values} for settings with a finite set of values; they show in --help."""
    # allow_abbrev=False: --num_pauses (M_ft) must never pass for --num_pauses_eval (M_inf)
    parser = OneLineParser(description=description, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    comments, choices = field_comments(cls), choices or {}
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = comments.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if f.name in choices:
            help_text += f" (choices: {', '.join(map(str, choices[f.name]))})"
        help_text += " (default: %(default)s)"
        if f.type is list:  # a field of files: --input a.txt b.txt
            parser.add_argument(f"--{f.name}", nargs="*", default=default, help=help_text,
                                metavar=f.name.upper())
        elif f.type is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=TYPES.get(f.type, f.type),
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
                raise UserError(f"--{name} must be {allowed}, got {getattr(cfg, name)}")


def parse_config(cls, description, argv=None, choices=None, defaults=None, prog=None):
    """A script's config from its command line, checked at the door: argparse reads the flags,
    then cls.check() what they mean together and the files they name. A refusal exits with one
    line that names the flag or file, before any work. defaults: {field: value} in place of the
    dataclass's (a task's own defaults); prog: the command's name in messages."""
    parser = config_parser(cls, description, choices)
    parser.prog = prog or parser.prog
    parser.set_defaults(**(defaults or {}))
    cfg = cls(**vars(parser.parse_args(argv)))
    try:
        cfg.check()
    except UserError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return cfg


# -----------------------------------------------------------------------------------------------
# Device, dtype and DDP

def resolve_device(device):
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; an unavailable GPU is a clear error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU (torch "
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
        raise UserError(f"--dtype must be auto, float32 or bfloat16, got {dtype!r}")
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
# A run directory has one owner. A run (train, finetune, experiment, prepare's output) holds
# DIR/.lock while it lives: made with O_EXCL, which is atomic on local disks and on the NFS of a
# cluster, and naming its holder. A second run is refused, naming the holder; a lock left by a
# killed process of this host is stale and is taken over with a note. A holder on another host
# cannot be seen from here, so its lock is never guessed dead: the message says how to clear it.

def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0 checks that the process exists, and sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def require_writable_dir(path, flag):
    """The door's check of an output directory: it exists and is writable, or it can be made
    (its nearest existing parent is a writable directory). A refusal names the flag."""
    require(path, f"{flag} is empty; name a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        # a dangling symlink does not exist, yet makedirs cannot make a directory in its place
        if os.path.islink(existing):
            raise UserError(f"{flag} {path}: {existing} is a symlink to "
                            f"{os.readlink(existing)}, which does not exist; remove the link "
                            "or choose another directory")
        existing = os.path.dirname(existing)
    where = "" if existing == os.path.abspath(path) else f" ({existing}, where it would be made)"
    require(os.path.isdir(existing),
            f"{flag} {path}: {existing} is a file, not a directory; choose another")
    require(os.access(existing, os.W_OK | os.X_OK),
            f"{flag} {path} is not writable{where}; choose a directory you can write to")


@contextmanager
def own_run_dir(out_dir, flag="--out_dir"):
    """Hold out_dir/.lock for the lifetime of the with-block. The directory is created; if the
    block leaves it empty (a run refused before its first output), it is removed again."""
    made = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {out_dir}: cannot make it ({e.strerror or e})") from e
    path = os.path.join(out_dir, ".lock")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.ctime(),
          "command": " ".join(sys.argv)}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = json.load(f)
            except (OSError, ValueError):  # being written this very moment: held
                holder = {}
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                print(f"note: {path} was left by process {holder['pid']}, which has ended; "
                      "taken over")
                os.remove(path)
                continue
            who = (f"process {holder.get('pid')} on {holder.get('host')} since "
                   f"{holder.get('since')} ({holder.get('command')})" if holder else "another run")
            raise UserError(f"{flag} {out_dir} is in use by {who}; wait for it to end or use "
                            f"another {flag}. If that run is dead, delete {path}")
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield out_dir
    finally:
        os.remove(path)
        if made and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)


# -----------------------------------------------------------------------------------------------
# Files written atomically: into a new temporary file beside the target, then renamed over it. A
# crash or a full disk mid-write leaves the previous file intact, and the temporary file is a
# fresh name (never an existing file or a planted symlink that the write would follow).

FULL_DISK = ("the previous version of the file is intact. Free some space and rerun (with "
             "--resume for training).")


def write_error(path, e):
    """The UserError for a failed write of path: a full disk is said in those words."""
    if isinstance(e, RuntimeError):
        # torch.save's zip writer meets a full disk as a short write, and says only "unexpected
        # pos" (or "failed writing"), naming no file and no cause.
        first = str(e).strip().splitlines()[0]
        return UserError(f"cannot write {path}: no space left on the disk (or over quota): "
                         f"torch's writer stopped part way ({first}); {FULL_DISK}")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"cannot write {path}: no space left on the disk; {FULL_DISK}")
    return UserError(f"cannot write {path}: {e.strerror or e}")


def is_torch_write_error(e):
    """A RuntimeError of torch.save's zip writer (inline_container.cc) that a short write causes."""
    text = str(e)
    return isinstance(e, RuntimeError) and ("inline_container" in text
                                            or "PytorchStreamWriter failed writing" in text)


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
        if isinstance(e, OSError) or is_torch_write_error(e):
            raise write_error(path, e) from e
        raise


def remove_interrupted_writes(folder, names):
    """Delete the temporary files that atomic_write left beside each of names in folder when a
    kill cut its write short (one can be as big as a model), with a note for each."""
    for name in names:
        for tmp in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
            os.remove(tmp)
            print(f"note: removed {tmp}, left by a write that was interrupted")


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
                raise UserError(f"{path}, line {i}: not valid JSON ({line[:60]!r}); "
                                 "fix or delete that line") from None
            print(f"note: {path}: dropped its last line, written only in part ({line[:60]!r})")
    return rows


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
                raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}")
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
    raise UserError(f"could not download {url} intact after {retries} attempts; run the command "
                     f"again (a partial {part.name} is resumed)")


# Dense bf16 peak FLOP/s from the datasheets, for MFU when --peak_flops is not given.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
              "L4": 121e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12, "3090": 71e12}


def peak_flops_of(device):
    if torch.device(device).type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)
