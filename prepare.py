"""
Preparing pretraining data and downloading the downstream tasks. A reader of the method can skip this
file: it turns text into the token shards that data.PretrainLoader reads.

    python prepare.py prepare --input corpus.txt --out data/mine      # any .txt / .jsonl / .json.gz
    python prepare.py c4 --shards 8 --out data/c4                      # C4-English, then prepare
    python prepare.py task gsm8k --out data/tasks                      # a downstream task's files
"""
import argparse
import bz2
import gzip
import json
import multiprocessing
import os
import shutil
from collections import Counter, deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import download
from data import SHARD_TOKENS, TOKENIZERS, get_tokenizer, write_shard
from tasks import TASK_ALIASES, TASK_FILES


# -----------------------------------------------------------------------------------------------
# prepare: text files -> token shards. Inputs stream through line by line (never loaded whole);
# worker processes tokenize batches of documents while the main process writes shards in order.

class ShardWriter:
    """Collects tokens and writes {split}_{index:06d}.bin files of at most shard_tokens tokens."""

    def __init__(self, out_dir, split, vocab_size, shard_tokens=SHARD_TOKENS):
        self.out_dir, self.split, self.vocab_size, self.shard_tokens = Path(out_dir), split, vocab_size, shard_tokens
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill, self.counts = 0, []

    def add(self, tokens):
        while tokens.size:
            take = min(tokens.size, self.shard_tokens - self.fill)
            self.buf[self.fill:self.fill + take] = tokens[:take]
            self.fill, tokens = self.fill + take, tokens[take:]
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self):
        if self.fill:
            write_shard(self.out_dir / f"{self.split}_{len(self.counts):06d}.bin", self.buf[:self.fill], self.vocab_size)
            self.counts.append(self.fill)
            self.fill = 0


def _open_text(path):
    return gzip.open(path, "rt", encoding="utf-8", newline="") if str(path).endswith(".gz") \
        else open(path, encoding="utf-8", newline="")


def iter_documents(path, stats, chunk_chars=1 << 22):
    """The documents of one input file. .jsonl / .json.gz: one JSON object a line, its `text` field
    (C4's format), yielded as strings; a line that does not parse is named, counted and skipped.
    .txt: the whole file is one document, yielded as (piece, more_follows) pieces of about
    chunk_chars, cut only where a line ends in a non-space character and the next starts with one:
    GPT-2's pre-tokenizer never joins tokens across such a newline, so the pieces' tokens equal
    the whole file's."""
    path = str(path)
    if path.endswith((".jsonl", ".json.gz", ".jsonl.gz")):
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                    if not isinstance(text, str):
                        raise TypeError("the `text` field is not a string")
                except (ValueError, KeyError, TypeError) as e:
                    stats["bad_lines"] += 1
                    what = "has no `text` field" if isinstance(e, KeyError) else f"does not parse ({e})"
                    tqdm.write(f"warning: {path}:{lineno}: JSON line {what}; skipped")
                    continue
                yield text
    elif path.endswith((".txt", ".txt.gz")):
        with _open_text(path) as f:
            piece, size, prev = [], 0, ""
            for line in f:
                if size >= chunk_chars and len(prev) >= 2 and not prev[-2].isspace() and not line[:1].isspace():
                    yield ("".join(piece), True)
                    piece, size = [], 0
                piece.append(line)
                size += len(line)
                prev = line
            yield ("".join(piece), False)
    else:
        raise SystemExit(f"{path}: unknown input type; give .txt, .jsonl or .json.gz files")


def _tokenize_batch(args):
    tokenizer_name, docs = args
    tok = get_tokenizer(tokenizer_name)
    out = {"train": [], "val": []}
    for text, continues, split in docs:
        # <|endoftext|> before each document; a later piece of a long .txt file continues its document.
        if not continues:
            out[split].append(np.array([tok.eot_id], dtype=np.uint16))
        out[split].append(np.asarray(tok.encode(text), dtype=np.uint16))
    return {s: np.concatenate(a) if a else np.empty(0, np.uint16) for s, a in out.items()}


def _document_batches(paths, split_of, stats, batch_docs):
    """Batches of (text, continues_previous_piece, split). split_of(doc_index, path) picks the split."""
    batch = []
    for path in paths:
        cont = False
        for item in iter_documents(path, stats):
            text, more = item if isinstance(item, tuple) else (item, False)
            if not cont:
                split = split_of(stats["docs"], path)
                stats["docs"] += 1
            batch.append((text, cont, split))
            cont = more
            if len(batch) == batch_docs:
                yield batch
                batch = []
    if batch:
        yield batch


def tokenize_files(paths, tokenizer_name, split_of, stats, workers, batch_docs=256):
    """Yield {'train': tokens, 'val': tokens} for batches of the documents of `paths`, in order,
    tokenized by `workers` processes. At most 2 x workers batches are in flight, so memory stays
    bounded for inputs of any size."""
    batches = ((tokenizer_name, b) for b in _document_batches(paths, split_of, stats, batch_docs))
    if workers <= 1:
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


def prepare(inputs, out_dir, tokenizer_name="gpt2", val_inputs=(), val_every=200, workers=None,
            shard_tokens=SHARD_TOKENS):
    """Tokenize text files into train_*.bin and val_*.bin shards plus meta.json under out_dir.
    The documents of val_inputs form the validation split; without them, every val_every-th
    document does (0: no validation split). Returns meta, the dict written to meta.json."""
    for p in [*inputs, *val_inputs]:
        if not Path(p).is_file():
            raise SystemExit(f"input file {p} does not exist")
    if set(map(str, inputs)) & set(map(str, val_inputs)):
        raise SystemExit(f"{sorted(set(map(str, inputs)) & set(map(str, val_inputs)))} given as both --input and "
                         "--val_input; a validation file must not also be trained on")
    tok = get_tokenizer(tokenizer_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("train_*.bin"), *out_dir.glob("val_*.bin")]:
        old.unlink()  # a re-run must not leave shards of an earlier, larger input behind
    val_set = {str(p) for p in val_inputs}
    def split_of(i, path):
        if val_set:
            return "val" if str(path) in val_set else "train"
        return "val" if val_every and i % val_every == val_every - 1 else "train"
    workers = workers or max(1, min(8, (os.cpu_count() or 1) - 1))
    writers = {s: ShardWriter(out_dir, s, tok.vocab_size, shard_tokens) for s in ("train", "val")}
    stats = Counter()
    paths = [*val_inputs, *inputs]
    with tqdm(unit="doc", desc="tokenizing") as bar:
        for tokens in tokenize_files(paths, tokenizer_name, split_of, stats, workers):
            for split, t in tokens.items():
                writers[split].add(t)
                stats["tokens"] += t.size
            bar.update(stats["docs"] - bar.n)
            bar.set_postfix(tokens=f"{stats['tokens'] / 1e6:.1f}M")
    for w in writers.values():
        w.flush()
    meta = {"tokenizer": tokenizer_name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "documents": stats["docs"], "skipped_lines": stats["bad_lines"],
            "train_shards": writers["train"].counts, "val_shards": writers["val"].counts}
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out_dir / "meta.json")
    for split, w in writers.items():
        for i, n in enumerate(w.counts):
            print(f"{out_dir / f'{split}_{i:06d}.bin'}: {n:,} tokens")
    print(f"{stats['docs']:,} documents: {sum(writers['train'].counts):,} train and "
          f"{sum(writers['val'].counts):,} val tokens ({tokenizer_name} tokenizer)"
          + (f"; {stats['bad_lines']} bad JSON lines skipped (see the warnings)" if stats["bad_lines"] else ""))
    if not writers["val"].counts:
        print("note: no validation split (give --val_input FILES or a smaller --val_every); "
              "train.py will not evaluate")
    return meta


C4_URL = "https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-{split}.{i:05d}-of-{n:05d}.json.gz"


def c4(num_shards, out_dir, tokenizer_name="gpt2", workers=None, block_size=2048):
    """Download the first num_shards C4-English training files and one validation file, then
    prepare them into out_dir (the raw files stay in out_dir/raw)."""
    if not 1 <= num_shards <= 1024:
        raise SystemExit(f"--shards must be in 1..1024 (C4 English has 1024 training files), got {num_shards}")
    out_dir = Path(out_dir)
    raw = out_dir / "raw"
    # The paper: 200B tokens (pauses included) of 2048-token sequences. C4 English has ~156B GPT-2
    # tokens in 1024 files, ~152M a file, so 200B tokens is ~1.3 epochs of the whole corpus.
    per_file = 156e9 / 1024
    print(f"C4 budget: the paper's 200B training tokens = {200e9 / 2048 / 1e6:.0f}M sequences of 2048; "
          f"at 2 bytes a token they take {200e9 * 2 / 1e9:.0f} GB of uint16 shards if stored once; all of C4 "
          f"English is ~156B tokens = {156e9 * 2 / 1e9:.0f} GB of shards (+ ~{1024 * 0.31:.0f} GB of raw .json.gz), "
          f"so 200B tokens is ~{200e9 / 156e9:.2f} epochs of it.")
    print(f"You asked for {num_shards} file(s): ~{num_shards * 0.31:.1f} GB raw, ~{num_shards * per_file / 1e9:.2f}B "
          f"tokens, ~{num_shards * per_file * 2 / 1e9:.1f} GB of shards.")
    need = num_shards * (0.31e9 + per_file * 2)
    free = shutil.disk_usage(out_dir if out_dir.exists() else out_dir.parent if out_dir.parent.exists() else ".").free
    if free < need:
        print(f"warning: {free / 1e9:.1f} GB free where {need / 1e9:.1f} GB are needed")
    train = [download(C4_URL.format(split="train", i=i, n=1024), raw / f"c4-train.{i:05d}-of-01024.json.gz")
             for i in range(num_shards)]
    val = [download(C4_URL.format(split="validation", i=0, n=8), raw / "c4-validation.00000-of-00008.json.gz")]
    return prepare(train, out_dir, tokenizer_name, val_inputs=val, workers=workers)



def download_task(name, out_dir):
    """Fetch a task's files into out_dir/NAME/; returns the paths."""
    name = TASK_ALIASES.get(name, name)
    if name not in TASK_FILES:
        raise SystemExit(f"unknown task {name!r}; choose one of {sorted(TASK_FILES)}")
    folder = Path(out_dir) / name
    paths = []
    for fname, url in TASK_FILES[name].items():
        path = download(url, folder / fname)
        if fname.endswith(".bz2"):
            plain = path.with_suffix("")
            if not plain.exists():
                with bz2.open(path, "rb") as src, open(f"{plain}.tmp", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(f"{plain}.tmp", plain)
            path = plain
        paths.append(path)
    for p in paths:
        print(f"{p}: {p.stat().st_size:,} bytes")
    print(f"use them with: python finetune.py --task {name} --data {out_dir}")
    return paths


# -----------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare pretraining data and download downstream tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize .txt / .jsonl / .json.gz files into token shards")
    p.add_argument("--input", nargs="+", required=True, help="text files (.txt) or JSON lines with a `text` field")
    p.add_argument("--out", required=True, help="output directory for the shards")
    p.add_argument("--tokenizer", default="gpt2", choices=sorted(TOKENIZERS))
    p.add_argument("--val_input", nargs="*", default=[], help="files that form the validation split")
    p.add_argument("--val_every", type=int, default=200,
                   help="without --val_input, every N-th document goes to validation (0: none)")
    p.add_argument("--shard_tokens", type=int, default=SHARD_TOKENS)
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: cores - 1, at most 8)")
    p = sub.add_parser("c4", help="download the first N C4-English training files and prepare them")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default="gpt2", choices=sorted(TOKENIZERS))
    p.add_argument("--workers", type=int, default=None)
    p = sub.add_parser("task", help="download a downstream task's public files into OUT/NAME/")
    p.add_argument("name", help=", ".join(sorted(TASK_FILES)))
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        if args.val_every < 0:
            parser.error(f"--val_every must be >= 0, got {args.val_every}")
        prepare(args.input, args.out, args.tokenizer, args.val_input, args.val_every, args.workers, args.shard_tokens)
    elif args.command == "c4":
        c4(args.shards, args.out, args.tokenizer, args.workers)
    else:
        download_task(args.name, args.out)


if __name__ == "__main__":
    main()
