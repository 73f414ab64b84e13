"""
Preparing data and weights. A reader of the method can skip this file: it turns text into the
token shards that data.PretrainLoader reads, and fetches the downstream tasks and GPT-2.

    python prepare.py prepare --input corpus.txt --out data/mine   # .txt / .jsonl / .json.gz
    python prepare.py c4 --shards 8 --out data/c4                   # C4-English, then prepare
    python prepare.py task gsm8k --out data/tasks                   # a downstream task's files
    python prepare.py gpt2 gpt2-medium                              # GPT-2 weights to start from
    python prepare.py export --ckpt out/ckpt.pt --out out/hf        # a checkpoint as HF GPT-2
"""
import argparse
import bz2
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import zlib
from collections import Counter, deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import SHARD_TOKENS, TOKENIZERS, get_tokenizer, shard_path, write_shard
from tasks import TASK_ALIASES, TASK_FILES
from tools import gpt2
from tools.common import UserError, atomic_write, download, write_json
from tools.export import export_hf

TEXT_TYPES, JSON_TYPES = (".txt", ".txt.gz"), (".jsonl", ".jsonl.gz", ".json.gz")
TXT_DOCS = ("file", "line")  # a .txt input is one document, or one document per line


# -----------------------------------------------------------------------------------------------
# Reading inputs. Files stream through line by line (never loaded whole). Bad input is counted
# per file and skipped, never fatal: a line that is not UTF-8 or not JSON, and a .gz file that
# ends early (what was read before the damage is kept). The summary names the files.

def _lines(path, problems):
    """The lines of a file (gzipped when it ends in .gz) as bytes."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        try:
            yield from f
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            problems["truncated"] = 1  # a download cut short: keep the lines before the cut
            problems["error"] = str(e)


def _bad(problems, kind, lineno):
    problems[kind] += 1
    problems.setdefault("first_bad_line", lineno)


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
    for lineno, raw in enumerate(_lines(path, stats), 1):
        try:  # UTF-8 never puts a newline byte inside a character, so lines decode one by one
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            _bad(stats, "not_utf8", lineno)
            continue
        if (is_json or txt_docs == "line") and not line.strip():
            continue  # a blank line holds no document
        if is_json:
            text = _json_text(line)
            if text is None:
                _bad(stats, "not_json", lineno)
            else:
                yield text, False
        elif txt_docs == "line":
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


def _check_settings(tokenizer_name, workers, shard_tokens=1, val_every=0, txt_docs="file"):
    if tokenizer_name not in TOKENIZERS:
        raise UserError(f"--tokenizer {tokenizer_name!r}: choose one of {sorted(TOKENIZERS)}")
    if workers < 0:
        raise UserError(f"--workers must be >= 0 (0: cores - 1, at most 8), got {workers}")
    if not 1 <= shard_tokens < 2 ** 31:  # the shard header holds the count as an int32
        raise UserError(f"--shard_tokens must be in 1..{2 ** 31 - 1}, got {shard_tokens}")
    if val_every < 0:
        raise UserError(f"--val_every must be >= 0 (0: no validation split), got {val_every}")
    if txt_docs not in TXT_DOCS:
        raise UserError(f"--txt_docs must be one of {TXT_DOCS}, got {txt_docs!r}")


def prepare(inputs, out_dir, tokenizer_name="gpt2", val_inputs=(), val_every=200, workers=0,
            shard_tokens=SHARD_TOKENS, txt_docs="file"):
    """Tokenize text files into train_*.bin and val_*.bin shards plus meta.json under out_dir.
    The documents of val_inputs form the validation split; without them, every val_every-th
    document does (0: no validation split). Returns meta, the dict written to meta.json."""
    # Everything is checked before out_dir is touched, and the shards are written into a
    # temporary directory beside it: a failed run leaves the previous shards and meta.json as
    # they were.
    _check_settings(tokenizer_name, workers, shard_tokens, val_every, txt_docs)
    if not inputs:
        raise UserError("--input: give at least one text file")
    for p in [*inputs, *val_inputs]:
        if not Path(p).is_file():
            raise UserError(f"input file {p} does not exist")
        if not str(p).endswith(TEXT_TYPES + JSON_TYPES):
            raise UserError(f"{p}: unknown input type; give .txt, .jsonl or .json.gz files")
    both = {Path(p).resolve() for p in inputs} & {Path(p).resolve() for p in val_inputs}
    if both:
        raise UserError(f"{sorted(map(str, both))} given as both --input and --val_input; a "
                         "validation file must not also be trained on")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    tok = get_tokenizer(tokenizer_name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        meta = _write_shards(tmp, inputs, tok, val_inputs, val_every, workers, shard_tokens,
                             txt_docs)
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "val"):
        for i, n in enumerate(meta[f"{split}_shards"]):
            print(f"{shard_path(out_dir, split, i)}: {n:,} tokens")
    _summary(meta)
    return meta


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
    bad = {p: c for p, c in stats["files"].items()
           if c["not_utf8"] or c["not_json"] or c["truncated"]}
    meta = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "txt_docs": txt_docs, "documents": stats["docs"], "duplicates": stats["duplicates"],
            "skipped_lines": sum(c["not_utf8"] + c["not_json"] for c in bad.values()),
            "problems": {p: dict(c) for p, c in bad.items()},
            "train_shards": writers["train"].counts, "val_shards": writers["val"].counts}
    if not meta["train_shards"]:
        _summary(meta)
        raise UserError(f"no training text in {', '.join(map(str, inputs))}; the output "
                         "directory is unchanged")
    write_json(meta, folder / "meta.json")
    return meta


def _swap_in(folder, out_dir):
    """Move the new shards and meta.json into out_dir in place of the old ones (other files,
    such as c4's raw/ downloads, stay). meta.json goes first and comes back last, so a crash in
    between leaves a directory that data.data_meta refuses, never a mix it would accept."""
    out_dir.mkdir(exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    for old in [*out_dir.glob("train_*.bin"), *out_dir.glob("val_*.bin")]:
        old.unlink()
    for new in folder.glob("*.bin"):
        os.replace(new, out_dir / new.name)
    os.replace(folder / "meta.json", out_dir / "meta.json")


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
    if not 1 <= num_shards <= 1024:
        raise UserError(f"--shards must be in 1..1024 (C4 English has 1024 training files), "
                         f"got {num_shards}")
    _check_settings(tokenizer_name, workers)
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
    if name not in TASK_FILES:
        raise UserError(f"unknown task {name!r}; choose one of {sorted(TASK_FILES)}")
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
GPT2_NAMES = "gpt2, gpt2-medium, gpt2-large, gpt2-xl"


def gpt2_weights(name, out_dir):
    folder = gpt2.download(name, out_dir)
    print(f"GPT-2 {name}: {folder}; start from it with --init_from "
          f"{name if Path(out_dir) == Path(GPT2_CACHE) else folder}")


def export(ckpt, out_dir):
    export_hf(ckpt, out_dir)
    print(f"{out_dir}: {ckpt} as config.json + pytorch_model.bin in Hugging Face's GPT-2 layout")


# -----------------------------------------------------------------------------------------------

def main(argv=None):
    try:
        run(argv)
    except UserError as e:  # a flag or file refused: one line that names it, no traceback
        raise SystemExit(f"prepare: error: {e}")


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tokenizer = dict(default="gpt2", choices=sorted(TOKENIZERS),
                     help="tokenizer of the shards (default: %(default)s)")
    workers = dict(type=int, default=0,
                   help="tokenizer processes; 0: cores - 1, at most 8 (default: %(default)s)")
    p = sub.add_parser("prepare", help="tokenize .txt / .jsonl / .json.gz files into shards",
                       description="Tokenize text into shards. Exact duplicate documents are "
                       "dropped; lines that are not UTF-8 or not JSON, and .gz files that end "
                       "early, are counted and skipped; OUT changes only when all went well.")
    p.add_argument("--input", nargs="+", required=True,
                   help="text files: .txt or JSON lines with a `text` field (.jsonl, .json.gz)")
    p.add_argument("--out", required=True, help="output directory for the shards and meta.json")
    p.add_argument("--tokenizer", **tokenizer)
    p.add_argument("--txt_docs", default="file", choices=TXT_DOCS,
                   help="a .txt file is one document ('file') or holds one document per line "
                        "('line') (default: %(default)s)")
    p.add_argument("--val_input", nargs="*", default=[],
                   help="files that form the validation split (default: none)")
    p.add_argument("--val_every", type=int, default=200,
                   help="without --val_input, every N-th document goes to validation; 0: none "
                        "(default: %(default)s)")
    p.add_argument("--shard_tokens", type=int, default=SHARD_TOKENS,
                   help="tokens per shard file, at least 1 (default: %(default)s)")
    p.add_argument("--workers", **workers)
    p = sub.add_parser("c4", help="download the first N C4-English training files, prepare them")
    p.add_argument("--shards", type=int, required=True, help="training files to use, 1..1024")
    p.add_argument("--out", required=True, help="output directory (raw downloads in OUT/raw)")
    p.add_argument("--tokenizer", **tokenizer)
    p.add_argument("--workers", **workers)
    p = sub.add_parser("task", help="download a downstream task's public files into OUT/NAME/")
    p.add_argument("name", help=f"the task: {', '.join(sorted(TASK_FILES))}")
    p.add_argument("--out", required=True, help="directory for the task files")
    p = sub.add_parser("gpt2", help="download GPT-2 weights (Hugging Face) to start from")
    p.add_argument("name", help=f"the checkpoint: {GPT2_NAMES}")
    p.add_argument("--out", default=GPT2_CACHE,
                   help="cache directory; the files go to OUT/NAME (default: %(default)s)")
    p = sub.add_parser("export", help="write a checkpoint in Hugging Face's GPT-2 layout")
    p.add_argument("--ckpt", required=True, help="a ckpt.pt of train.py or finetune.py")
    p.add_argument("--out", required=True, help="directory for config.json + pytorch_model.bin")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.input, args.out, args.tokenizer, args.val_input, args.val_every,
                args.workers, args.shard_tokens, args.txt_docs)
    elif args.command == "c4":
        c4(args.shards, args.out, args.tokenizer, args.workers)
    elif args.command == "task":
        download_task(args.name, args.out)
    elif args.command == "gpt2":
        gpt2_weights(args.name, args.out)
    else:
        export(args.ckpt, args.out)


if __name__ == "__main__":
    main()
