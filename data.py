"""
Data, from text to batches:
    the tokenizer          GPT-2's BPE or plain bytes, both with <|endoftext|> and <|pause|>
    the built-in world     an offline corpus and synthetic tasks, so `python train.py` needs no download
    token shards           uint16 files with a checked header, written by `python data.py prepare`
    PretrainLoader         memory-mapped shards -> (x, y) batches, disjoint across DDP ranks, resumable,
                           with the paper's pause-pretraining applied (pause.py)
    downloads              `python data.py c4 ...` and `python data.py task NAME ...` (standard library)
"""
import argparse
import bz2
import gzip
import itertools
import json
import multiprocessing
import os
import random
import shutil
import urllib.request
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import torch
from tqdm import tqdm

import pause

PAUSE = "<|pause|>"
EOT = "<|endoftext|>"


@dataclass
class Tokenizer:
    """A tiktoken encoding with two special tokens, <|endoftext|> and <|pause|>.
    encode() treats all text as ordinary text: a document that happens to contain the characters
    '<|pause|>' is encoded as those characters, never as the special id."""
    name: str
    enc: tiktoken.Encoding

    @property
    def eot_id(self):
        return self.enc.encode_single_token(EOT)

    @property
    def pause_id(self):
        return self.enc.encode_single_token(PAUSE)

    @property
    def vocab_size(self):
        return self.enc.n_vocab

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids):
        return self.enc.decode(list(ids))


def _gpt2_pause():
    # GPT-2's 50257 ids (50256 is <|endoftext|>) plus <|pause|> = 50257, which falls in the padding
    # model.py adds anyway (50258 -> 50304): the pause costs one embedding row, d_model parameters.
    base = tiktoken.get_encoding("gpt2")
    return tiktoken.Encoding(name="gpt2_pause", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                             special_tokens={EOT: base.eot_token, PAUSE: base.n_vocab})


def _byte_pause():
    # One token per byte (0..255), then <|endoftext|> = 256 and <|pause|> = 257. Needs no download,
    # so the built-in default runs offline; digits are single tokens, which suits arithmetic.
    return tiktoken.Encoding(name="byte_pause", pat_str=r"[\s\S]", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={EOT: 256, PAUSE: 257})


TOKENIZERS = {"gpt2": _gpt2_pause, "byte": _byte_pause}
_cache = {}


def get_tokenizer(name):
    """'gpt2' (GPT-2 BPE, needs tiktoken's gpt2 files, downloaded on first use) or 'byte'."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    if name not in _cache:
        _cache[name] = Tokenizer(name, TOKENIZERS[name]())
    return _cache[name]


# -----------------------------------------------------------------------------------------------
# The built-in world: a small, offline, deterministic corpus of arithmetic and short multi-step
# reasoning, so that `python train.py` runs with no download, and so that the finetuning tasks can
# be drawn from the same world. Every example is a prompt and an answer, written in the corpus as
# one line "{prompt}{answer}\n". A hash of the prompt puts it in the train or the test split, so
# test questions never appear in the pretraining corpus or in finetuning data.

NAMES = ["Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Joe"]
THINGS = ["apples", "books", "coins", "eggs", "pens", "shells", "stamps", "cards"]


def _world_add(rng):
    a, b = rng.randrange(1000), rng.randrange(1000)
    return f"{a}+{b}=", str(a + b)


def _world_chain(rng):
    # Multi-step arithmetic: each variable is computed from the previous one.
    steps = rng.randint(2, 4)
    names = "abcdefgh"
    value = rng.randrange(10)
    parts = [f"{names[0]}={value}"]
    for i in range(1, steps + 1):
        op, k = rng.choice("+-*"), rng.randint(1, 9)
        if op == "*" and value * k > 999:
            op = "-"
        if op == "-" and value - k < 0:
            op = "+"
        value = {"+": value + k, "-": value - k, "*": value * k}[op]
        parts.append(f"{names[i]}={names[i - 1]}{op}{k}")
    return ";".join(parts) + f";{names[steps]}=", str(value)


def _world_story(rng):
    # A short word problem with two or three steps.
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    have, gets = rng.randint(1, 20), rng.randint(1, 20)
    gives = rng.randint(0, have + gets)
    text = f"{name} has {have} {thing}. {name} gets {gets} more"
    text += f" and gives away {gives}." if gives else "."
    return text + f" How many {thing} does {name} have now? ", str(have + gets - gives)


WORLD_TASKS = {"add": _world_add, "chain": _world_chain, "story": _world_story}


def world_split(prompt):
    """'test' for about 1 prompt in 10 (by a hash of its text), else 'train'."""
    return "test" if zlib.crc32(prompt.encode()) % 10 == 0 else "train"


def synthetic_task(name, split, n, seed=0):
    """n distinct examples {'prompt', 'answer'} of a built-in task, all from one split."""
    if name not in WORLD_TASKS:
        raise ValueError(f"unknown built-in task {name!r}; choose one of {sorted(WORLD_TASKS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{name}/{split}/{seed}")
    seen, out = set(), []
    for _ in range(200 * n + 1000):
        prompt, answer = WORLD_TASKS[name](rng)
        if prompt not in seen and world_split(prompt) == split:
            seen.add(prompt)
            out.append({"prompt": prompt, "answer": answer})
            if len(out) == n:
                return out
    raise ValueError(f"built-in task {name!r} has fewer than {n} distinct {split} examples")


def builtin_documents(num_docs, seed=0):
    """The built-in pretraining corpus: documents of 4-16 lines, each line a train-split example
    from a random family."""
    rng = random.Random(f"corpus/{seed}")
    families = sorted(WORLD_TASKS)
    docs = []
    while len(docs) < num_docs:
        lines, num_lines = [], rng.randint(4, 16)
        while len(lines) < num_lines:
            prompt, answer = WORLD_TASKS[rng.choice(families)](rng)
            if world_split(prompt) == "train":
                lines.append(prompt + answer + "\n")
        docs.append("".join(lines))
    return docs


def builtin_tokens(num_docs, seed, tokenizer_name="byte"):
    """The built-in corpus as one uint16 token stream: <|endoftext|> before every document.
    Train and validation use different seeds (and the corpus never holds a test-split prompt)."""
    tok = get_tokenizer(tokenizer_name)
    ids = [[tok.eot_id] + doc for doc in tok.encode_batch(builtin_documents(num_docs, seed))]
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16)


# -----------------------------------------------------------------------------------------------
# Token shards on disk, in the manner of llm.c: a 1024-byte header of int32s (magic, version, token
# count, vocabulary size) followed by the tokens as uint16. GPT-2's 50258 ids fit in 16 bits, which
# halves the disk of int32: the paper's 200B tokens take about 400 GB. The header is checked on load,
# so a truncated or foreign file is refused instead of being read as garbage tokens.

SHARD_MAGIC = 20231004  # the paper's arXiv date; any fixed number that random files rarely start with
SHARD_VERSION = 1
HEADER_INTS = 256
SHARD_TOKENS = 100_000_000  # 200 MB per shard


def write_shard(path, tokens, vocab_size):
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= 2 ** 16:
        raise ValueError(f"{path}: token id {int(tokens.max())} does not fit in uint16")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = SHARD_MAGIC, SHARD_VERSION, tokens.size, vocab_size
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())
    os.replace(tmp, path)  # a crash mid-write never leaves a half shard under the real name


def load_shard(path):
    """Memory-map a token shard after checking its header; returns a read-only uint16 array."""
    path = str(path)
    size = os.path.getsize(path)
    if size < HEADER_INTS * 4:
        raise ValueError(f"{path}: corrupt token shard ({size} bytes, shorter than the header); "
                         "delete it and run `python data.py prepare` again")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"{path}: not a token shard (bad magic number {header[0]}); "
                         "make shards with `python data.py prepare`")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"{path}: shard version {header[1]}, this code reads version {SHARD_VERSION}; "
                         "prepare the data again")
    expected = HEADER_INTS * 4 + 2 * int(header[2])
    if size != expected:
        raise ValueError(f"{path}: corrupt token shard: the header promises {header[2]} tokens "
                         f"({expected} bytes) but the file has {size} bytes; prepare it again")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))


def shard_paths(data_dir, split):
    """The shards of one split ('train' or 'val') of a prepared directory, checked to exist."""
    data_dir = Path(data_dir)
    hint = ("prepare one with `python data.py prepare --input FILES --out DIR` "
            "(or `python data.py c4 --shards N --out DIR`), or leave out --data for the built-in corpus")
    if not data_dir.is_dir():
        raise SystemExit(f"data directory {data_dir} does not exist; {hint}")
    paths = sorted(data_dir.glob(f"{split}_*.bin"))
    if not paths:
        raise SystemExit(f"data directory {data_dir} holds no {split}_*.bin token shards; {hint}")
    return paths


def data_meta(data_dir):
    """meta.json written by `prepare`: the tokenizer name and the shards' token counts."""
    path = Path(data_dir) / "meta.json"
    shard_paths(data_dir, "train")
    if not path.is_file():
        raise SystemExit(f"{path} is missing: it names the tokenizer of the shards; prepare the data "
                         "again with `python data.py prepare`")
    return json.loads(path.read_text())


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


# -----------------------------------------------------------------------------------------------
# The pretraining loader. The data is cut into windows of block_size + 1 tokens starting every
# block_size tokens (x = window[:-1], y = window[1:]). An epoch visits every window once: the shards
# in a shuffled order, the windows of each shard in a shuffled order. The windows of an epoch are
# dealt out in blocks of batch_size: rank r of world_size takes blocks r, r + world_size, ... so no
# two ranks read the same window, and one process with world_size-fold gradient accumulation reads
# exactly the windows that world_size processes read together. All randomness (the order and the
# pause positions) is a function of (seed, epoch, position), so the loader's state is a few numbers
# and a resumed run continues with the very next batch.

def _seed(*words):
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] % (2 ** 63))


class PretrainLoader:
    def __init__(self, source, batch_size, block_size, pause_frac=0.0, pause_id=None, rank=0, world_size=1,
                 seed=0, split="train"):
        if isinstance(source, np.ndarray):
            self.shards = [source]
        elif isinstance(source, (list, tuple)):
            self.shards = [load_shard(p) for p in source]
        else:
            self.shards = [load_shard(p) for p in shard_paths(source, split)]
        self.B, self.T, self.rank, self.world_size, self.seed = batch_size, block_size, rank, world_size, seed
        # Paper Sec. 3.1: M_pt pauses go into every pretraining sequence of block_size + 1 tokens.
        self.num_pauses = pause.num_pretrain_pauses(pause_frac, block_size)
        if self.num_pauses and pause_id is None:
            raise ValueError("pause_frac > 0 needs the tokenizer's pause_id")
        self.pause_id = pause_id
        self.windows = np.array([max(0, (len(s) - 1) // block_size) for s in self.shards], dtype=np.int64)
        self.num_windows = int(self.windows.sum())
        if self.num_windows < batch_size * world_size:
            raise ValueError(f"the {split} data holds {self.num_windows} windows of {block_size + 1} tokens, fewer "
                             f"than one global batch ({batch_size} x {world_size} ranks); prepare more data or "
                             "use a smaller --batch_size / --block_size")
        self.epoch = self.pos = 0  # pos: windows of this epoch already dealt out to all ranks
        self.real_tokens = self.pause_tokens = 0  # input tokens this loader has delivered
        self._orders = {}

    def _epoch_order(self):
        """The epoch's shard order and the cumulative window counts along it (computed once an epoch)."""
        if self.epoch not in self._orders:
            order = np.random.default_rng(_seed(self.seed, self.epoch)).permutation(len(self.shards))
            self._orders = {self.epoch: (order, np.cumsum(self.windows[order]))}
            self._perms = {}
        return self._orders[self.epoch]

    def _window(self, i):
        """Tokens of the epoch's i-th window."""
        order, ends = self._epoch_order()
        j = int(np.searchsorted(ends, i, side="right"))
        s = int(order[j])
        if s not in self._perms:
            self._perms = {s: np.random.default_rng(_seed(self.seed, self.epoch, s + 1)).permutation(self.windows[s])}
        k = int(self._perms[s][i - (ends[j] - self.windows[s])])
        return self.shards[s][k * self.T:(k + 1) * self.T + 1]

    def next_batch(self):
        if self.pos + self.B * self.world_size > self.num_windows:
            self.epoch, self.pos = self.epoch + 1, 0  # the epoch's last partial global batch is left out
        first = self.pos + self.rank * self.B
        w = torch.from_numpy(np.stack([self._window(i) for i in range(first, first + self.B)]).astype(np.int64))
        if self.num_pauses:
            # The pause positions depend only on which windows these are, not on the rank.
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, first // self.B, 7))
            w = pause.insert_pauses(w, self.num_pauses, self.pause_id, generator=g)
        x, y = w[:, :-1], w[:, 1:]
        if self.num_pauses:
            y = pause.pause_targets(y, self.pause_id)  # S_ignore: no loss where the target is a pause
            n_pause = int((x == self.pause_id).sum())
        else:
            n_pause = 0
        self.pause_tokens += n_pause
        self.real_tokens += x.numel() - n_pause
        self.pos += self.B * self.world_size
        return x.contiguous(), y.contiguous()

    def state_dict(self):
        # The RNG state is (seed, epoch, pos): every random choice is derived from them.
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "num_windows": self.num_windows,
                "block_size": self.T, "num_pauses": self.num_pauses,
                "real_tokens": self.real_tokens, "pause_tokens": self.pause_tokens}

    def load_state_dict(self, state):
        for key in ("num_windows", "block_size", "num_pauses"):
            if state[key] != getattr(self, {"block_size": "T"}.get(key, key)):
                raise ValueError(f"loader state: the checkpoint's data has {key}={state[key]}, this run's has "
                                 f"{getattr(self, {'block_size': 'T'}.get(key, key))}; resume with the same data "
                                 "and flags, or start a new --out_dir")
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self.real_tokens, self.pause_tokens = state["real_tokens"], state["pause_tokens"]


def to_device(x, y, device):
    """Pinned host memory lets the copy to the GPU run asynchronously (non_blocking) while the GPU
    still works on the previous micro-step."""
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


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
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                if have and r.status != 206:
                    have = 0  # the server ignored the Range request: start over
                length = r.headers.get("Content-Length")
                total = have + int(length) if length else None
                with open(part, "ab" if have else "wb") as f, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar:
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
    raise SystemExit(f"could not download {url} intact after {retries} attempts; run the command again "
                     f"(a partial {part.name} is resumed)")


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


# The downstream tasks' original public files (see ../shared/TASKS.md). finetune.py's load_task
# reads them from DIR/NAME/ under these file names.
GITHUB = "https://raw.githubusercontent.com/"
TASK_FILES = {
    "gsm8k": {
        "train.jsonl": GITHUB + "openai/grade-school-math/master/grade_school_math/data/train.jsonl",
        "test.jsonl": GITHUB + "openai/grade-school-math/master/grade_school_math/data/test.jsonl"},
    "squad": {
        "train-v1.1.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
        "dev-v1.1.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json"},
    "coqa": {
        "coqa-train-v1.0.json": "https://nlp.stanford.edu/data/coqa/coqa-train-v1.0.json",
        "coqa-dev-v1.0.json": "https://nlp.stanford.edu/data/coqa/coqa-dev-v1.0.json"},
    "commonsense_qa": {
        "train_rand_split.jsonl": "https://s3.amazonaws.com/commensenseqa/train_rand_split.jsonl",
        "dev_rand_split.jsonl": "https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl"},
    "piqa": {
        "train.jsonl": "https://yonatanbisk.com/piqa/data/train.jsonl",
        "train-labels.lst": "https://yonatanbisk.com/piqa/data/train-labels.lst",
        "valid.jsonl": "https://yonatanbisk.com/piqa/data/valid.jsonl",
        "valid-labels.lst": "https://yonatanbisk.com/piqa/data/valid-labels.lst"},
    "hellaswag": {
        "hellaswag_train.jsonl": GITHUB + "rowanz/hellaswag/master/data/hellaswag_train.jsonl",
        "hellaswag_val.jsonl": GITHUB + "rowanz/hellaswag/master/data/hellaswag_val.jsonl"},
    "lambada": {
        "lambada_test.jsonl": "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"},
    "webquestions": {  # the Stanford release, bzip2-compressed; decompressed after the download
        "webquestions.examples.train.json.bz2": "https://nlp.stanford.edu/static/software/sempre/release-emnlp2013/"
                                                "lib/data/webquestions/dataset_11/webquestions.examples.train.json.bz2",
        "webquestions.examples.test.json.bz2": "https://nlp.stanford.edu/static/software/sempre/release-emnlp2013/"
                                               "lib/data/webquestions/dataset_11/webquestions.examples.test.json.bz2"},
    "nq_open": {
        "NQ-open.train.jsonl": GITHUB + "google-research-datasets/natural-questions/master/nq_open/NQ-open.train.jsonl",
        "NQ-open.dev.jsonl": GITHUB + "google-research-datasets/natural-questions/master/nq_open/NQ-open.dev.jsonl"},
}
TASK_ALIASES = {"commonsenseqa": "commonsense_qa", "csqa": "commonsense_qa", "nq": "nq_open"}


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
