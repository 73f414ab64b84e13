"""
Preparing data and weights. A reader of the method can skip this file: it turns text into the
token shards that data.PretrainLoader reads, and fetches the downstream tasks and GPT-2.

    python -m tools.prepare prepare --input corpus.txt --out data/mine  # .txt .jsonl .json.gz
    python -m tools.prepare c4 --shards 8 --out data/c4                  # C4-English, prepared
    python -m tools.prepare task gsm8k --out data/tasks                  # a downstream task
    python -m tools.prepare gpt2 gpt2-medium                             # GPT-2 weights

`python -m tools.prepare COMMAND --help` lists the flags of each command.
"""
import argparse
import bz2
import codecs
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import SHARD_TOKENS, TOKENIZERS, get_tokenizer, shard_path, write_shard
from tasks import TASK_ALIASES, TASK_FILES
from tools import gpt2
from tools.common import (UserError, atomic_write, check_ranges, download, own_run_dir,
                          parse_config, require, require_writable_dir, write_json)

TEXT_TYPES, JSON_TYPES = (".txt", ".txt.gz"), (".jsonl", ".jsonl.gz", ".json.gz")
TXT_DOCS = ("file", "line")  # a .txt input is one document, or one document per line


# -----------------------------------------------------------------------------------------------
# Reading inputs. Files stream through line by line (never loaded whole). Bad input is counted
# per file and skipped, never fatal: a line that is not UTF-8 or not JSON, and a .gz file that
# ends early (what was read before the damage is kept). The summary names the files. A file that
# is mostly not text (binary, another encoding, control characters) is refused by name instead.

UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # what editors save as "Unicode"
# Control characters other than tab, newline and carriage return: NUL bytes and the like.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
COUNTS = ("text_lines", "chars", "control")  # what is counted per file besides the problems


def _lines(path, problems):
    """The lines of a file (gzipped when it ends in .gz) as str, None for a line that is not
    UTF-8. A file that starts with a UTF-16 byte-order mark is read as UTF-16."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        try:
            bom = f.read(2)
            f.seek(0)
            if bom in UTF16_BOMS:
                yield from _utf16_lines(f, path)
                return
            for raw in f:
                try:  # UTF-8 never puts a newline byte inside a character: lines decode alone
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield None
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            problems["truncated"] = 1  # a download cut short: keep the lines before the cut
            problems["error"] = str(e)


def _utf16_lines(f, path):
    try:
        yield from io.TextIOWrapper(f, encoding="utf-16", newline="")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} starts with a UTF-16 byte-order mark but is not UTF-16 text "
                        f"({e.reason}); save it as UTF-8") from None


def _bad(problems, kind, lineno):
    problems[kind] += 1
    problems.setdefault("first_bad_line", lineno)


def _count(problems, text):
    problems["chars"] += len(text)
    problems["control"] += len(CONTROL.findall(text))
    problems["text_lines"] += bool(text.strip())


def _json_text(line):
    """The `text` field of a JSON line, or None if the line does not parse or has none."""
    try:
        text = json.loads(line)["text"]
    except (ValueError, KeyError, TypeError):
        return None
    return text if isinstance(text, str) else None


def iter_documents(path, stats, txt_docs="file", chunk_chars=1 << 22):
    """(text, more_follows) for the documents of one input file; stats counts its problems.
    .jsonl / .json.gz: one JSON object a line, its `text` field (C4's format). .txt with txt_docs
    'line': each non-blank line. .txt with 'file': the whole file, in pieces of about chunk_chars
    cut only where a line ends in a non-space character and the next starts with one: GPT-2's
    pre-tokenizer never joins tokens across such a newline, so the pieces' tokens are the file's."""
    is_json = str(path).endswith(JSON_TYPES)
    piece, size, prev = [], 0, ""
    for lineno, line in enumerate(_lines(path, stats), 1):
        if line is None:
            _bad(stats, "not_utf8", lineno)
            continue
        if (is_json or txt_docs == "line") and not line.strip():
            continue  # a blank line holds no document
        if is_json:
            text = _json_text(line)
            if text is None:
                _bad(stats, "not_json", lineno)
            else:
                _count(stats, text)
                yield text, False
            continue
        _count(stats, line)
        if txt_docs == "line":
            yield line.rstrip("\r\n"), False
        else:
            if size >= chunk_chars and len(prev) >= 2 and not prev[-2].isspace() \
                    and not line[:1].isspace():
                yield "".join(piece), True
                piece, size = [], 0
            piece.append(line)
            size += len(line)
            prev = line
    if not is_json and txt_docs == "file":
        yield "".join(piece), False


def check_text(path, c):
    """Refuses a file that holds no text, or whose lines are mostly not UTF-8, or whose
    characters are more than 10% control characters (NUL bytes: binary data, or UTF-16 without
    its byte-order mark): tokenized, it would be noise."""
    require(c["text_lines"] or c["not_utf8"] or c["not_json"], f"{path} holds no text")
    require(c["not_utf8"] <= c["text_lines"],
            f"{path}: {c['not_utf8']:,} of its lines are not UTF-8 text (against "
            f"{c['text_lines']:,} that are); it looks like binary data or text in another "
            "encoding. Save it as UTF-8 (or UTF-16 with a byte-order mark)")
    require(c["control"] <= 0.1 * c["chars"],
            f"{path}: {c['control']:,} of its {c['chars']:,} characters are control characters "
            "such as NUL; it looks like binary data or UTF-16 without a byte-order mark. Save "
            "it as UTF-8")


def _digest(pieces):
    # 128 bits, so that two distinct documents practically never collide. The set of digests
    # costs ~100 bytes a document (1 GB per 10M documents): the price of exact deduplication.
    h = hashlib.blake2b(digest_size=16)
    for p in pieces:
        h.update(p.encode("utf-8", "surrogatepass"))
    return h.digest()


def _document_batches(paths, split_of, stats, batch_docs, txt_docs):
    """Batches of (text, continues_previous_piece, split) for the documents of paths. A document
    seen before is dropped (counted), before the split is chosen, so train and val never share
    one. split_of(doc_index, path) picks the split of each document kept."""
    seen, batch = set(), []
    for path in paths:
        problems = stats["files"][str(path)] = Counter()
        if txt_docs == "file" and str(path).endswith(TEXT_TYPES):
            # One document in pieces: hash it in a first pass, to know before its first piece.
            key = _digest(text for text, _ in iter_documents(path, problems, txt_docs))
            docs = [(key, iter_documents(path, Counter(), txt_docs))]
        else:
            docs = ((_digest([text]), [(text, False)])
                    for text, _ in iter_documents(path, problems, txt_docs))
        for key, pieces in docs:
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            split = split_of(stats["docs"], path)
            stats["docs"] += 1
            for i, (text, _) in enumerate(pieces):
                batch.append((text, i > 0, split))
                if len(batch) == batch_docs:
                    yield batch
                    batch = []
    if batch:
        yield batch


# -----------------------------------------------------------------------------------------------
# Tokenizing: worker processes tokenize batches of documents while the main process reads the
# inputs and writes shards in order.

def _tokenize_batch(args):
    tokenizer_name, docs = args
    tok = get_tokenizer(tokenizer_name)
    out = {"train": [], "val": []}
    for text, continues, split in docs:
        # <|endoftext|> before each document; a later piece of a .txt file continues its document.
        if not continues:
            out[split].append(np.array([tok.eot_id], dtype=np.uint16))
        out[split].append(np.asarray(tok.encode(text), dtype=np.uint16))
    return {s: np.concatenate(a) if a else np.empty(0, np.uint16) for s, a in out.items()}


def tokenize_files(paths, tokenizer_name, split_of, stats, workers, txt_docs, batch_docs=256):
    """{'train': tokens, 'val': tokens} for batches of the documents of paths, in order. At most
    2 x workers batches are in flight, so memory stays bounded for inputs of any size."""
    batches = ((tokenizer_name, b)
               for b in _document_batches(paths, split_of, stats, batch_docs, txt_docs))
    if workers == 1:
        yield from map(_tokenize_batch, batches)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = deque()
        for b in batches:
            pending.append(pool.apply_async(_tokenize_batch, (b,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class ShardWriter:
    """Collects tokens and writes {split}_{index:06d}.bin files of at most shard_tokens tokens."""

    def __init__(self, out_dir, split, vocab_size, shard_tokens):
        self.out_dir, self.split, self.vocab_size = out_dir, split, vocab_size
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill, self.counts = 0, []

    def add(self, tokens):
        while tokens.size:
            take = min(tokens.size, len(self.buf) - self.fill)
            self.buf[self.fill:self.fill + take] = tokens[:take]
            self.fill, tokens = self.fill + take, tokens[take:]
            if self.fill == len(self.buf):
                self.flush()

    def flush(self):
        if self.fill:
            path = shard_path(self.out_dir, self.split, len(self.counts))
            write_shard(path, self.buf[:self.fill], self.vocab_size)
            self.counts.append(self.fill)
            self.fill = 0


# -----------------------------------------------------------------------------------------------
# Preparing a dataset. The new shards and meta.json are written into a hidden directory inside
# the output, OUT/.prepare-*.tmp, and checked for meaning there; OUT is not changed until they are
# complete. Then OUT/.swap.json is written (atomically): from that moment the new dataset wins, and
# moving it in is finished by whichever run comes next if this one is killed. The caller holds
# OUT's lock (tools.common.own_run_dir), so no hidden directory found there can be another live
# run's: a killed run's is removed.

MIN_TOKENS = 1024  # the default --min_tokens: a batch of 4 rows of 256, the tiny preset's context
SWAP = ".swap.json"  # names the complete new dataset while it is moved into OUT
NEW_PREFIX = ".prepare-"


def prepare(inputs, out_dir, tokenizer_name="gpt2", val_inputs=(), val_every=200, workers=0,
            shard_tokens=SHARD_TOKENS, txt_docs="file", min_tokens=MIN_TOKENS):
    """Tokenize text files into train_*.bin and val_*.bin shards plus meta.json under out_dir.
    The documents of val_inputs form the validation split; without them, every val_every-th
    document does (0: no validation split). Returns meta, the dict written to meta.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finish_or_remove_killed_runs(out_dir)
    tok = get_tokenizer(tokenizer_name)
    new = Path(tempfile.mkdtemp(prefix=NEW_PREFIX, suffix=".tmp", dir=out_dir))
    try:
        meta = _write_shards(new, inputs, tok, val_inputs, val_every, workers, shard_tokens,
                             txt_docs)
        train_tokens = sum(meta["train_shards"])
        require(train_tokens >= min_tokens,
                f"the training split holds {train_tokens:,} tokens, fewer than --min_tokens "
                f"{min_tokens:,} (one batch of the smallest model); give more text, or a lower "
                f"--min_tokens. {out_dir} is unchanged")
        write_json({"new": new.name}, out_dir / SWAP)  # the new dataset is complete: it wins
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _replace_old_dataset(new, out_dir)
    for split in ("train", "val"):
        for i, n in enumerate(meta[f"{split}_shards"]):
            print(f"{shard_path(out_dir, split, i)}: {n:,} tokens")
    _summary(meta)
    return meta


def finish_or_remove_killed_runs(out_dir):
    """Finish the move of a complete dataset that a killed run had begun, and remove the hidden
    directories of killed runs that had not finished theirs. Needs out_dir's lock."""
    if (out_dir / SWAP).exists():
        new = out_dir / json.loads((out_dir / SWAP).read_text())["new"]
        print(f"note: {out_dir}: a prepare was stopped while it moved its finished dataset in "
              "(whose shards are complete); that move is finished first")
        _replace_old_dataset(new, out_dir)
    # (a journal cut short by the kill is one of atomic_write's temporary files)
    for left in sorted([*out_dir.glob(f"{NEW_PREFIX}*.tmp"), *out_dir.glob(f".{SWAP}.*.tmp")]):
        print(f"note: removed {left}, the unfinished output of a prepare that was stopped")
        if left.is_dir():
            shutil.rmtree(left)
        else:
            left.unlink()


def _replace_old_dataset(new, out_dir):
    """Move the shards and meta.json of the complete dataset in `new` into out_dir in place of
    the old ones (other files, such as c4's raw/ downloads, stay). Safe to repeat from any point:
    meta.json is removed before the first shard moves and comes back last, so a reader never
    takes a mix of old and new shards for a dataset."""
    new_meta = new / "meta.json"
    meta = json.loads((new_meta if new_meta.exists() else out_dir / "meta.json").read_text())
    keep = {shard_path(out_dir, split, i).name
            for split in ("train", "val") for i in range(len(meta[f"{split}_shards"]))}
    if new_meta.exists():
        (out_dir / "meta.json").unlink(missing_ok=True)
    for old in [*out_dir.glob("train_*.bin"), *out_dir.glob("val_*.bin")]:
        if old.name not in keep:
            old.unlink()
    for shard in sorted(new.glob("*.bin")):
        os.replace(shard, out_dir / shard.name)
    if new_meta.exists():
        os.replace(new_meta, out_dir / "meta.json")
    shutil.rmtree(new, ignore_errors=True)
    (out_dir / SWAP).unlink()


def _write_shards(folder, inputs, tok, val_inputs, val_every, workers, shard_tokens, txt_docs):
    val_set = {str(p) for p in val_inputs}

    def split_of(i, path):
        if val_set:
            return "val" if str(path) in val_set else "train"
        return "val" if val_every and i % val_every == val_every - 1 else "train"
    workers = workers or max(1, min(8, (os.cpu_count() or 1) - 1))
    writers = {s: ShardWriter(folder, s, tok.vocab_size, shard_tokens) for s in ("train", "val")}
    stats = Counter(files={})
    # The validation files come first, so a training document that repeats one is the one dropped.
    paths = [*val_inputs, *inputs]
    with tqdm(unit="doc", desc="tokenizing") as bar:
        for tokens in tokenize_files(paths, tok.name, split_of, stats, workers, txt_docs):
            for split, t in tokens.items():
                writers[split].add(t)
                stats["tokens"] += t.size
            bar.update(stats["docs"] - bar.n)
            bar.set_postfix(tokens=f"{stats['tokens'] / 1e6:.1f}M")
    for w in writers.values():
        w.flush()
    bad = {p: Counter({k: v for k, v in c.items() if k not in COUNTS})
           for p, c in stats["files"].items() if c["not_utf8"] or c["not_json"] or c["truncated"]}
    meta = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "txt_docs": txt_docs, "documents": stats["docs"], "duplicates": stats["duplicates"],
            "skipped_lines": sum(c["not_utf8"] + c["not_json"] for c in bad.values()),
            "problems": {p: dict(c) for p, c in bad.items()},
            "train_shards": writers["train"].counts, "val_shards": writers["val"].counts}
    if not meta["train_shards"]:
        _summary(meta)
        raise UserError(f"no training text in {', '.join(map(str, inputs))}; the output "
                         "directory is unchanged")
    for path, counts in stats["files"].items():
        check_text(path, counts)
    write_json(meta, folder / "meta.json")
    return meta


def _summary(meta):
    for path, c in meta["problems"].items():
        kinds = [f"{what}: {c[k]:,}" for k, what in (("not_utf8", "lines not valid UTF-8"),
                                                    ("not_json", "lines not JSON with a `text`"))
                 if c.get(k)]
        if "first_bad_line" in c:
            kinds.append(f"the first bad line is {path}:{c['first_bad_line']}")
        if c.get("truncated"):
            kinds.append(f"ends early ({c['error']}): the lines before are kept")
        print(f"skipped in {path}: " + "; ".join(kinds))
    train, val = sum(meta["train_shards"]), sum(meta["val_shards"])
    print(f"{meta['documents']:,} documents ({meta['duplicates']:,} exact duplicates dropped): "
          f"{train:,} train and {val:,} val tokens ({meta['tokenizer']} tokenizer)")
    if train and not val:
        print("note: no validation split (give --val_input FILES or a smaller --val_every); "
              "train.py will not evaluate")


# -----------------------------------------------------------------------------------------------
# Downloads: C4, the downstream tasks, GPT-2.

C4_URL = ("https://huggingface.co/datasets/allenai/c4/resolve/main/en/"
          "c4-{split}.{i:05d}-of-{n:05d}.json.gz")


def c4(num_shards, out_dir, tokenizer_name="gpt2", workers=0):
    """Download the first num_shards C4-English training files and one validation file, then
    prepare them into out_dir (the raw files stay in out_dir/raw)."""
    out_dir = Path(out_dir)
    raw = out_dir / "raw"
    # The paper trains on 200B tokens (pauses included). C4 English holds ~156B GPT-2 tokens in
    # 1024 files of ~0.31 GB of .json.gz; at 2 bytes a token, all of it is ~312 GB of shards.
    tokens = num_shards * 156e9 / 1024
    need = num_shards * 0.31e9 + 2 * tokens
    print(f"C4: the paper's 200B training tokens are ~1.3 epochs of all 1024 files; your "
          f"{num_shards} file(s) hold ~{tokens / 1e9:.2f}B tokens and need ~{need / 1e9:.1f} GB "
          "of disk (raw files and shards)")
    free = shutil.disk_usage(next(p for p in (out_dir, *out_dir.absolute().parents)
                                  if p.exists())).free
    if free < need:
        print(f"warning: {free / 1e9:.1f} GB free where {need / 1e9:.1f} GB are needed")
    train = [download(C4_URL.format(split="train", i=i, n=1024),
                      raw / f"c4-train.{i:05d}-of-01024.json.gz") for i in range(num_shards)]
    val = [download(C4_URL.format(split="validation", i=0, n=8),
                    raw / "c4-validation.00000-of-00008.json.gz")]
    return prepare(train, out_dir, tokenizer_name, val_inputs=val, workers=workers)


def download_task(name, out_dir):
    """Fetch a task's files into out_dir/NAME/; returns the paths."""
    name = TASK_ALIASES.get(name, name)
    folder = Path(out_dir) / name
    paths = []
    for fname, url in TASK_FILES[name].items():
        path = download(url, folder / fname)
        if fname.endswith(".bz2"):
            plain = path.with_suffix("")
            if not plain.exists():
                with bz2.open(path, "rb") as src:
                    atomic_write(plain, lambda dst: shutil.copyfileobj(src, dst))
            path = plain
        paths.append(path)
    for p in paths:
        print(f"{p}: {p.stat().st_size:,} bytes")
    print(f"use them with: python finetune.py --task {name} --data {out_dir}")
    return paths


GPT2_CACHE = "data_cache/gpt2"  # where gpt2.from_pretrained looks for a checkpoint given by name


def gpt2_weights(name, out_dir):
    folder = gpt2.download(name, out_dir)
    print(f"GPT-2 {name}: {folder}; start from it with --init_from "
          f"{name if Path(out_dir) == Path(GPT2_CACHE) else folder}")


# -----------------------------------------------------------------------------------------------
# The command line: one config dataclass per command, checked at the door before any work.

def require_input_file(path, flag):
    require(os.path.exists(path), f"{flag} {path} does not exist")
    require(not os.path.isdir(path), f"{flag} {path} is a directory; give the files in it")
    require(os.access(path, os.R_OK), f"{flag} {path} is not readable")


@dataclass
class PrepareConfig:
    """Tokenize .txt / .jsonl / .json.gz files into shards. Exact duplicate documents are
    dropped; lines that are not UTF-8 or not JSON, and .gz files that end early, are counted and
    skipped; a file that is not text is refused; OUT changes only when all went well."""
    input: list = field(default_factory=list)  # .txt, or .jsonl / .json.gz with a `text` field
    out: str = ""                  # output directory for the shards and meta.json
    tokenizer: str = "gpt2"        # tokenizer of the shards
    txt_docs: str = "file"         # a .txt file is one document, or one document a line
    val_input: list = field(default_factory=list)  # files of the validation split
    val_every: int = 200           # no --val_input: every N-th document is validation; 0: none
    shard_tokens: int = SHARD_TOKENS  # tokens per shard file, 1 .. 2^31 - 1 (the header's int32)
    min_tokens: int = MIN_TOKENS   # refuse a training split smaller than this (a file of noise)
    workers: int = 0               # tokenizer processes; 0: cores - 1, at most 8

    def check(self):
        require(self.input, "--input: give at least one text file")
        for flag, paths in (("--input", self.input), ("--val_input", self.val_input)):
            for path in paths:
                require_input_file(path, flag)
                require(path.endswith(TEXT_TYPES + JSON_TYPES), f"{flag} {path}: unknown "
                        "input type; give .txt, .jsonl or .json.gz files")
        both = {Path(p).resolve() for p in self.input} & {Path(p).resolve()
                                                           for p in self.val_input}
        require(not both, f"{sorted(map(str, both))} given as both --input and --val_input; a "
                "validation file must not also be trained on")
        require_writable_dir(self.out, "--out")
        check_ranges(self, {">= 0": "val_every min_tokens workers"})
        require(1 <= self.shard_tokens < 2 ** 31,
                f"--shard_tokens must be in 1..{2 ** 31 - 1}, got {self.shard_tokens}")

    def run(self):
        with own_run_dir(self.out, "--out"):
            prepare(self.input, self.out, self.tokenizer, self.val_input, self.val_every,
                    self.workers, self.shard_tokens, self.txt_docs, self.min_tokens)


@dataclass
class C4Config:
    """Download the first N C4-English training files and one validation file, then prepare
    them (the paper's pretraining corpus)."""
    shards: int = 0                # C4-English training files to use, 1..1024
    out: str = ""                  # output directory (the raw downloads go to OUT/raw)
    tokenizer: str = "gpt2"        # tokenizer of the shards
    workers: int = 0               # tokenizer processes; 0: cores - 1, at most 8

    def check(self):
        require(1 <= self.shards <= 1024, "--shards must be in 1..1024 (C4 English has 1024 "
                f"training files), got {self.shards}")
        require_writable_dir(self.out, "--out")
        check_ranges(self, {">= 0": "workers"})

    def run(self):
        with own_run_dir(self.out, "--out"):
            c4(self.shards, self.out, self.tokenizer, self.workers)


@dataclass
class TaskConfig:
    """Download a downstream task's public files into OUT/NAME/."""
    name: str = ""                 # the task (also given without the flag: `task gsm8k`)
    out: str = ""                  # directory for the task files (they go to OUT/NAME)

    def check(self):
        require(self.name, "give the task: `task NAME --out DIR`")
        require_writable_dir(self.out, "--out")

    def run(self):
        download_task(self.name, self.out)


@dataclass
class Gpt2Config:
    """Download GPT-2 weights (Hugging Face) to start from."""
    name: str = "gpt2"             # the checkpoint (also given without the flag: `gpt2 gpt2-xl`)
    out: str = GPT2_CACHE          # cache directory; the files go to OUT/NAME

    def check(self):
        require_writable_dir(self.out, "--out")

    def run(self):
        gpt2_weights(self.name, self.out)


COMMANDS = {"prepare": PrepareConfig, "c4": C4Config, "task": TaskConfig, "gpt2": Gpt2Config}
TOKENIZER = {"tokenizer": sorted(TOKENIZERS)}
CHOICES = {"prepare": {**TOKENIZER, "txt_docs": list(TXT_DOCS)},
           "c4": TOKENIZER,
           "task": {"name": sorted({*TASK_FILES, *TASK_ALIASES})},
           "gpt2": {"name": list(gpt2.NAMES)}}


def parse_command(argv=None):
    """The config of the command that argv names, checked at the door as
    tools.common.parse_config does: a refusal exits with one line naming the flag or file."""
    top = argparse.ArgumentParser(prog="python -m tools.prepare", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("command", choices=list(COMMANDS),
                     help="; ".join(f"{k}: {c.__doc__.split('. ')[0]}"
                                    for k, c in COMMANDS.items()))
    top.add_argument("args", nargs=argparse.REMAINDER, help="the command's flags (--help)")
    args = top.parse_args(sys.argv[1:] if argv is None else argv)
    rest = args.args
    if args.command in ("task", "gpt2") and rest and not rest[0].startswith("-"):
        rest = ["--name", *rest]  # `task gsm8k` as README writes it
    cls = COMMANDS[args.command]
    return parse_config(cls, cls.__doc__, rest, CHOICES[args.command],
                        prog=f"{top.prog} {args.command}")


def main(argv=None):
    cfg = parse_command(argv)
    out = getattr(cfg, "out", "")
    made = out and not os.path.lexists(out)
    try:
        cfg.run()
    except UserError as e:  # refused on reading the files (no text, noise): one line, no trace
        raise SystemExit(f"prepare: error: {e}")
    finally:
        if made and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # a run that failed leaves no empty directory behind


if __name__ == "__main__":
    main()
