"""
Data, from text to batches:
    the tokenizer       GPT-2's BPE or plain bytes, both with <|endoftext|> and <|pause|>
    the built-in world  an offline corpus and synthetic tasks: `python train.py` needs no download
    token shards        uint16 files with a checked header, written by `python prepare.py prepare`
    PretrainLoader      shards -> (x, y) batches, disjoint across DDP ranks, resumable, with the
                        paper's pause-pretraining applied (pause.pause_pretrain_batch)
"""
import functools
import json
import random
import zlib
from pathlib import Path

import numpy as np
import tiktoken
import torch

import pause
from tools.common import UserError, atomic_write

PAUSE, EOT = "<|pause|>", "<|endoftext|>"
TOKENIZERS = ("gpt2", "byte")  # the names get_tokenizer knows


class Tokenizer:
    """A tiktoken encoding with two special tokens, <|endoftext|> and <|pause|>. encode() treats
    all text as ordinary text: a document that happens to contain the characters '<|pause|>' is
    encoded as those characters, never as the special id."""

    def __init__(self, name, enc):
        self.name, self.enc, self.vocab_size = name, enc, enc.n_vocab
        self.eot_id, self.pause_id = enc.encode_single_token(EOT), enc.encode_single_token(PAUSE)

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids):
        return self.enc.decode(list(ids))


@functools.cache
def get_tokenizer(name):
    """'gpt2' (GPT-2 BPE, needs tiktoken's gpt2 files, downloaded on first use) or 'byte'."""
    if name == "gpt2":
        # GPT-2's 50257 ids (50256 is <|endoftext|>) plus <|pause|> = 50257, which falls in the
        # padding model.py adds anyway (50258 -> 50304): the pause costs one embedding row.
        base = tiktoken.get_encoding("gpt2")
        enc = tiktoken.Encoding(name="gpt2_pause", pat_str=base._pat_str,
                                mergeable_ranks=base._mergeable_ranks,
                                special_tokens={EOT: base.eot_token, PAUSE: base.n_vocab})
    elif name == "byte":
        # One token per byte (0..255), then <|endoftext|> = 256 and <|pause|> = 257. Needs no
        # download, so the built-in default runs offline; digits are single tokens: good for sums.
        enc = tiktoken.Encoding(name="byte_pause", pat_str=r"[\s\S]",
                                mergeable_ranks={bytes([i]): i for i in range(256)},
                                special_tokens={EOT: 256, PAUSE: 257})
    else:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    return Tokenizer(name, enc)


# -----------------------------------------------------------------------------------------------
# The built-in world: a small, offline, deterministic corpus of arithmetic and short multi-step
# reasoning, so that `python train.py` runs with no download, and so that the finetuning tasks can
# be drawn from the same world. Every example is a prompt and an answer, written in the corpus as
# one line "{prompt}{answer}\n". A hash of the prompt puts it in the train or the test split, so
# test questions never appear in the pretraining corpus or in finetuning data.

def _world_add(rng):
    a, b = rng.randrange(1000), rng.randrange(1000)
    return f"{a}+{b}=", str(a + b)


def _world_chain(rng):
    # Multi-step arithmetic: each variable is computed from the previous one, kept in 0..999.
    steps, names, value = rng.randint(2, 4), "abcdefgh", rng.randrange(10)
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
    name = rng.choice(["Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Joe"])
    thing = rng.choice(["apples", "books", "coins", "eggs", "pens", "shells", "stamps", "cards"])
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
    """n distinct examples {'prompt', 'answer'} of a built-in task, from split 'train' or 'test'."""
    if name not in WORLD_TASKS:
        raise ValueError(f"unknown built-in task {name!r}; choose one of {sorted(WORLD_TASKS)}")
    rng, out = random.Random(f"{name}/{split}/{seed}"), {}  # out: {prompt: answer}, as drawn
    for _ in range(200 * n + 1000):
        prompt, answer = WORLD_TASKS[name](rng)
        if world_split(prompt) == split:
            out.setdefault(prompt, answer)  # a prompt drawn again keeps its first place
            if len(out) == n:
                return [{"prompt": p, "answer": a} for p, a in out.items()]
    raise ValueError(f"built-in task {name!r} has fewer than {n} distinct {split} examples")


def builtin_documents(num_docs, seed=0):
    """The built-in pretraining corpus: documents of 4-16 lines, each line a train-split example
    from a random family."""
    rng, families, docs = random.Random(f"corpus/{seed}"), sorted(WORLD_TASKS), []
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
    docs = tok.encode_batch(builtin_documents(num_docs, seed))
    return np.fromiter((t for doc in docs for t in [tok.eot_id] + doc), dtype=np.uint16)


# -----------------------------------------------------------------------------------------------
# Token shards on disk, in the manner of llm.c: a 1024-byte header of int32s (magic, version,
# token count, vocabulary size) followed by the tokens as uint16. GPT-2's 50258 ids fit in 16
# bits, which halves the disk of int32: the paper's 200B tokens take about 400 GB. The header is
# checked on load, so a truncated, foreign or other-tokenizer file is refused, not read as garbage.

SHARD_MAGIC = 20231004  # the paper's arXiv date: a fixed number random files rarely start with
SHARD_VERSION = 1
HEADER_INTS = 256
SHARD_TOKENS = 100_000_000  # 200 MB per shard
PREPARE_HINT = "prepare the data again with `python prepare.py prepare`"


def write_shard(path, tokens, vocab_size):
    tokens = np.asarray(tokens)
    if tokens.size and int(tokens.max()) >= 2 ** 16:
        raise ValueError(f"{path}: token id {int(tokens.max())} does not fit in uint16")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = SHARD_MAGIC, SHARD_VERSION, tokens.size, vocab_size
    body = np.ascontiguousarray(tokens, dtype=np.uint16)  # copies only if it must
    # a crash mid-write never leaves a half shard under the real name
    atomic_write(path, lambda f: f.writelines([header.tobytes(), body.data]))


def load_shard(path, vocab_size=None):
    """Memory-map a token shard after checking its header (and, given vocab_size, that its tokens
    come from a tokenizer with that many ids); returns a read-only uint16 array."""
    path, size = str(path), Path(path).stat().st_size
    if size < HEADER_INTS * 4:
        raise UserError(f"{path}: corrupt token shard ({size} bytes, shorter than the header); "
                         f"delete it and {PREPARE_HINT}")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise UserError(f"{path}: not a token shard (bad magic number {header[0]}); "
                         "make shards with `python prepare.py prepare`")
    if header[1] != SHARD_VERSION:
        raise UserError(f"{path}: shard version {header[1]}, this code reads version "
                         f"{SHARD_VERSION}; {PREPARE_HINT}")
    expected = HEADER_INTS * 4 + 2 * int(header[2])
    if size != expected:
        raise UserError(f"{path}: corrupt token shard: the header promises {header[2]} tokens "
                         f"({expected} bytes) but the file has {size} bytes; {PREPARE_HINT}")
    if vocab_size is not None and header[3] != vocab_size:
        # Ids of another tokenizer would train silently on wrong tokens (or index past the table).
        raise UserError(f"{path}: its tokens come from a vocabulary of {header[3]} ids, but the "
                         f"tokenizer has {vocab_size}; {PREPARE_HINT} with the right --tokenizer")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4,
                     shape=(int(header[2]),))


def shard_path(data_dir, split, index):
    return Path(data_dir) / f"{split}_{index:06d}.bin"


def data_meta(data_dir):
    """meta.json written by `prepare` (the tokenizer's name, the shards' token counts), after
    checking everything a run will read: meta.json parses, the shards on disk are exactly the
    ones it lists, with sound headers and the vocabulary of the tokenizer it names. A run learns
    of bad data now, not at its first evaluation."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{data_dir} holds no prepared data ({path} is missing); prepare it with "
                         "`python prepare.py prepare --input FILES --out DIR` (or `python "
                         "prepare.py c4 --shards N --out DIR`), or leave out --data for the "
                         "built-in corpus")
    try:
        meta = json.loads(path.read_text())
        vocab_size = get_tokenizer(meta["tokenizer"]).vocab_size
        listed = {s: meta[f"{s}_shards"] for s in ("train", "val")}
        if not listed["train"]:
            raise ValueError("no train shards")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a meta.json written by prepare ({e!r}); {PREPARE_HINT}")
    for split, counts in listed.items():
        want = {shard_path(data_dir, split, i): n for i, n in enumerate(counts)}
        have = {p: len(load_shard(p, vocab_size)) for p in Path(data_dir).glob(f"{split}_*.bin")}
        if want != have:
            p = min(p for p in want.keys() | have.keys() if want.get(p) != have.get(p))
            what = (f"is missing, though {path} lists it" if p not in have
                    else f"is not listed in {path}" if p not in want
                    else f"holds {have[p]:,} tokens where {path} says {want[p]:,}")
            raise UserError(f"{p} {what}; {PREPARE_HINT}")
    return meta


# -----------------------------------------------------------------------------------------------
# The pretraining loader. The data is cut into windows of block_size + 1 tokens starting every
# block_size tokens. An epoch visits every window once: the shards in a shuffled order, the windows
# of each shard in a shuffled order. The windows of an epoch are dealt out in blocks of batch_size:
# rank r of world_size takes blocks r, r + world_size, ... so no two ranks read the same window,
# and one process with world_size-fold gradient accumulation reads exactly the windows that
# world_size processes read together. All randomness (the order and the pause positions) is a
# function of (seed, epoch, position), so the loader's state is a few numbers and a resumed run
# continues with the very next batch.

def _seed(*words):
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] % (2 ** 63))


class PretrainLoader:
    """source: a prepared directory (its `split` shards; meta: its data_meta() if already checked)
    or an array of tokens. pause_frac > 0 turns on pause-pretraining, M_pt = pause_frac x T."""

    def __init__(self, source, batch_size, block_size, pause_frac=0.0, pause_id=None, rank=0,
                 world_size=1, seed=0, split="train", more_data="prepare more data", meta=None):
        if isinstance(source, np.ndarray):
            self.shards = [source]
        else:
            meta = meta or data_meta(source)  # checks the shards' vocabulary and headers
            self.shards = [load_shard(shard_path(source, split, i))
                           for i in range(len(meta[f"{split}_shards"]))]
        self.B, self.T, self.rank, self.world_size = batch_size, block_size, rank, world_size
        self.seed, self.pause_id = seed, pause_id
        self.num_pauses = pause.num_pretrain_pauses(pause_frac, block_size)
        if self.num_pauses and pause_id is None:
            raise ValueError("pause_frac > 0 needs the tokenizer's pause_id")
        self.windows = np.array([max(0, (len(s) - 1) // block_size) for s in self.shards], np.int64)
        self.num_windows = int(self.windows.sum())
        if self.num_windows < batch_size * world_size:
            raise UserError(f"the {split} data holds {self.num_windows} windows of "
                             f"{block_size + 1} tokens, fewer than one global batch ({batch_size} "
                             f"x {world_size} ranks); {more_data} or use a smaller "
                             "--batch_size / --block_size")
        self.epoch = self.pos = 0  # pos: windows of this epoch already dealt out to all ranks
        self.real_tokens = self.pause_tokens = 0  # input tokens this loader has delivered
        self._orders = {}

    def _epoch_order(self):
        """The epoch's shard order and the cumulative window counts along it (once an epoch)."""
        if self.epoch not in self._orders:
            rng = np.random.default_rng(_seed(self.seed, self.epoch))
            order = rng.permutation(len(self.shards))
            self._orders = {self.epoch: (order, np.cumsum(self.windows[order]))}
            self._perms = {}
        return self._orders[self.epoch]

    def _window(self, i):
        """Tokens of the epoch's i-th window."""
        order, ends = self._epoch_order()
        j = int(np.searchsorted(ends, i, side="right"))
        s = int(order[j])
        if s not in self._perms:  # only the current shard's window order is kept in memory
            rng = np.random.default_rng(_seed(self.seed, self.epoch, s + 1))
            self._perms = {s: rng.permutation(self.windows[s])}
        k = int(self._perms[s][i - (ends[j] - self.windows[s])])
        return self.shards[s][k * self.T:(k + 1) * self.T + 1]

    def next_batch(self):
        if self.pos + self.B * self.world_size > self.num_windows:
            self.epoch, self.pos = self.epoch + 1, 0  # the last partial global batch is left out
        first = self.pos + self.rank * self.B
        w = np.stack([self._window(i) for i in range(first, first + self.B)]).astype(np.int64)
        # the pause positions depend only on which windows these are
        g = (torch.Generator().manual_seed(_seed(self.seed, self.epoch, first // self.B, 7))
             if self.num_pauses else None)
        x, y = pause.pause_pretrain_batch(torch.from_numpy(w), self.num_pauses, self.pause_id, g)
        n_pause = int((x == self.pause_id).sum()) if self.num_pauses else 0
        self.pause_tokens += n_pause
        self.real_tokens += x.numel() - n_pause
        self.pos += self.B * self.world_size
        return x, y

    def state_dict(self):
        # The RNG state is (seed, epoch, pos): every random choice is derived from them.
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "block_size": self.T,
                "num_windows": self.num_windows, "num_pauses": self.num_pauses,
                "real_tokens": self.real_tokens, "pause_tokens": self.pause_tokens}

    def load_state_dict(self, state):
        ours = self.state_dict()
        for key in ("num_windows", "block_size", "num_pauses"):
            if state[key] != ours[key]:
                raise ValueError(f"loader state: the checkpoint's data has {key}={state[key]}, "
                                 f"this run's has {ours[key]}; resume with the same data and "
                                 "flags, or start a new --out_dir")
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self.real_tokens, self.pause_tokens = state["real_tokens"], state["pause_tokens"]


def to_device(x, y, device):
    """Pinned host memory lets the copy to the GPU run asynchronously (non_blocking) while the GPU
    still works on the previous micro-step."""
    pin = torch.device(device).type == "cuda"
    return tuple((t.pin_memory() if pin else t).to(device, non_blocking=pin) for t in (x, y))
