"""
Data, from text to batches:
    the tokenizer       GPT-2's BPE or plain bytes, with <|endoftext|> and <|pause|>
    the built-in world  an offline corpus and tasks: `python train.py` needs no download
    token shards        uint16 files with a checked header (from `python -m tools.prepare`)
    PretrainLoader      shards -> (x, y) batches, disjoint across DDP ranks, resumable, with
                        the paper's pause-pretraining (pause.pause_pretrain_batch)
"""
import functools
import json
import os
import random
import zlib
from pathlib import Path

import numpy as np
import tiktoken
import torch

import pause
from tools.common import UserError, atomic_write

PAUSE = "<|pause|>"
EOT = "<|endoftext|>"
TOKENIZERS = ("gpt2", "byte")  # the names get_tokenizer knows


class Tokenizer:
    """A tiktoken encoding with two special tokens, <|endoftext|> and <|pause|>. encode()
    treats all text as ordinary text: a document that happens to hold the characters
    '<|pause|>' is encoded as those characters, never as the special id."""

    def __init__(self, name, enc):
        self.name = name
        self.enc = enc
        self.vocab_size = enc.n_vocab
        self.eot_id = enc.encode_single_token(EOT)
        self.pause_id = enc.encode_single_token(PAUSE)

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
        # GPT-2's 50257 ids (50256 is <|endoftext|>) plus <|pause|> = 50257, which falls in
        # the padding model.py adds anyway (50258 -> 50304): the pause costs one embedding row.
        base = tiktoken.get_encoding("gpt2")
        special = {EOT: base.eot_token, PAUSE: base.n_vocab}
        enc = tiktoken.Encoding(name="gpt2_pause", pat_str=base._pat_str,
                                mergeable_ranks=base._mergeable_ranks, special_tokens=special)
    elif name == "byte":
        # One token a byte (0..255), then <|endoftext|> = 256 and <|pause|> = 257. Needs no
        # download, so the built-in default runs offline; digits are single tokens.
        ranks = {bytes([i]): i for i in range(256)}
        enc = tiktoken.Encoding(name="byte_pause", pat_str=r"[\s\S]", mergeable_ranks=ranks,
                                special_tokens={EOT: 256, PAUSE: 257})
    else:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    return Tokenizer(name, enc)


# -----------------------------------------------------------------------------------------------
# The built-in world: a small, offline, deterministic corpus of arithmetic and short multi-step
# reasoning, so that `python train.py` runs with no download, and so that the finetuning tasks
# can be drawn from the same world. Every example is a prompt and an answer, written in the
# corpus as one line "{prompt}{answer}\n". A hash of the prompt puts it in the train or the
# test split, so test questions never appear in the pretraining corpus or finetuning data.

def _world_add(rng):
    a = rng.randrange(1000)
    b = rng.randrange(1000)
    return f"{a}+{b}=", str(a + b)


def _world_chain(rng):
    # Multi-step arithmetic: each variable is computed from the previous one, kept in 0..999.
    names = "abcdefgh"
    steps = rng.randint(2, 4)
    value = rng.randrange(10)
    parts = [f"{names[0]}={value}"]
    for i in range(1, steps + 1):
        op = rng.choice("+-*")
        k = rng.randint(1, 9)
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
    have = rng.randint(1, 20)
    gets = rng.randint(1, 20)
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
    rng = random.Random(f"{name}/{split}/{seed}")
    out = {}  # {prompt: answer}, in the order drawn
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
    rng = random.Random(f"corpus/{seed}")
    families = sorted(WORLD_TASKS)
    docs = []
    while len(docs) < num_docs:
        lines = []
        num_lines = rng.randint(4, 16)
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
# bits, which halves the disk of int32: the paper's 200B tokens take about 400 GB. The header
# is checked on load, so a truncated, foreign or other-tokenizer file is refused, not read as
# garbage.

SHARD_MAGIC = 20231004  # the paper's arXiv date: a number random files rarely start with
SHARD_VERSION = 1
HEADER_INTS = 256
SHARD_TOKENS = 100_000_000  # 200 MB a shard
PREPARE_HINT = "prepare the data again with `python -m tools.prepare prepare`"


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
    """Memory-map a token shard after checking its header (and, given vocab_size, that its
    tokens come from a tokenizer with that many ids); returns a read-only uint16 array."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a file, so not a token shard; {PREPARE_HINT}")
    size = os.path.getsize(path)
    if size < HEADER_INTS * 4:
        raise UserError(f"{path}: corrupt token shard ({size} bytes, shorter than the "
                        f"header); delete it and {PREPARE_HINT}")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    magic, version, count, vocab = (int(v) for v in header[:4])
    if magic != SHARD_MAGIC:
        raise UserError(f"{path}: not a token shard (bad magic number {magic}); make "
                        "shards with `python -m tools.prepare prepare`")
    if version != SHARD_VERSION:
        raise UserError(f"{path}: shard version {version}, this code reads version "
                        f"{SHARD_VERSION}; {PREPARE_HINT}")
    expected = HEADER_INTS * 4 + 2 * count
    if size != expected:
        raise UserError(f"{path}: corrupt token shard: the header promises {count} tokens "
                        f"({expected} bytes) but the file has {size} bytes; {PREPARE_HINT}")
    if vocab_size is not None and vocab != vocab_size:
        # Another tokenizer's ids would train silently on wrong tokens (or index past the
        # embedding table).
        raise UserError(f"{path}: its tokens come from a vocabulary of {vocab} ids, but the "
                        f"tokenizer has {vocab_size}; {PREPARE_HINT} with the right "
                        "--tokenizer")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(count,))


def shard_path(data_dir, split, index):
    return Path(data_dir) / f"{split}_{index:06d}.bin"


def _is_count_list(value):
    return isinstance(value, list) and all(type(n) is int and n >= 0 for n in value)


def read_checked_meta(data_dir):
    """meta.json written by prepare (the tokenizer's name, the shards' token counts), after
    checking everything a run will read: the shards on disk are exactly the ones it lists,
    with sound headers and the vocabulary of the tokenizer it names. Raises UserError naming
    the file at fault: a run learns of bad data now, not at its first evaluation."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{data_dir} holds no prepared data ({path} is missing); prepare it "
                        "with `python -m tools.prepare prepare --input FILES --out DIR`, or "
                        "leave out --data for the built-in corpus")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a meta.json written by prepare ({e}); {PREPARE_HINT}")
    fields = {"tokenizer": lambda v: v in TOKENIZERS,
              "train_shards": lambda v: _is_count_list(v) and len(v) > 0,
              "val_shards": _is_count_list}
    for key, ok in fields.items():
        value = meta.get(key) if isinstance(meta, dict) else None
        if not ok(value):
            raise UserError(f"{path} is not a meta.json written by prepare: its {key} is "
                            f"{value!r}; {PREPARE_HINT}")
    vocab_size = get_tokenizer(meta["tokenizer"]).vocab_size
    for split in ("train", "val"):
        want = {shard_path(data_dir, split, i): n
                for i, n in enumerate(meta[f"{split}_shards"])}
        have = {p: len(load_shard(p, vocab_size))
                for p in Path(data_dir).glob(f"{split}_*.bin")}
        if want == have:
            continue
        p = min(p for p in want.keys() | have.keys() if want.get(p) != have.get(p))
        if p not in have:
            what = f"is missing, though {path} lists it"
        elif p not in want:
            what = f"is not listed in {path}"
        else:
            what = f"holds {have[p]:,} tokens where {path} says {want[p]:,}"
        raise UserError(f"{p} {what}; {PREPARE_HINT}")
    return meta


# -----------------------------------------------------------------------------------------------
# The pretraining loader. The data is cut into windows of block_size + 1 tokens starting every
# block_size tokens. An epoch visits every window once: the shards in a shuffled order, the
# windows of each shard in a shuffled order. The windows of an epoch are dealt out in blocks of
# batch_size: rank r of world_size takes blocks r, r + world_size, ... so no two ranks read the
# same window, and one process with world_size-fold gradient accumulation reads exactly the
# windows that world_size processes read together. All randomness (the order and the pause
# positions) is a function of (seed, epoch, position), so the loader's state is a few numbers
# and a resumed run continues with the very next batch.

def _seed(*words):
    state = np.random.SeedSequence(list(words)).generate_state(1, np.uint64)
    return int(state[0] % (2 ** 63))


class PretrainLoader:
    """source: a prepared directory (its `split` shards; meta: its read_checked_meta(), if
    already read) or an array of tokens. pause_frac > 0 turns on pause-pretraining,
    M_pt = pause_frac x T."""

    def __init__(self, source, batch_size, block_size, pause_frac=0.0, pause_id=None, rank=0,
                 world_size=1, seed=0, split="train", more_data="prepare more data",
                 meta=None):
        if isinstance(source, np.ndarray):
            self.shards = [source]
        else:
            meta = meta or read_checked_meta(source)
            count = len(meta[f"{split}_shards"])
            self.shards = [load_shard(shard_path(source, split, i)) for i in range(count)]
        self.B = batch_size
        self.T = block_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pause_id = pause_id
        self.num_pauses = pause.num_pretrain_pauses(pause_frac, block_size)
        assert pause_id is not None or not self.num_pauses, "pauses need the pause_id"
        windows = [max(0, (len(s) - 1) // block_size) for s in self.shards]
        self.windows = np.array(windows, np.int64)
        self.num_windows = int(self.windows.sum())
        if self.num_windows < batch_size * world_size:
            raise UserError(f"the {split} data holds {self.num_windows} windows of "
                            f"{block_size + 1} tokens, fewer than one global batch "
                            f"({batch_size} x {world_size} ranks); {more_data} or use a "
                            "smaller --batch_size / --block_size")
        self.epoch = 0
        self.pos = 0  # windows of this epoch already dealt out to all ranks
        self.real_tokens = 0  # input tokens delivered, real ones and pauses
        self.pause_tokens = 0
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
            # a new epoch; its last partial global batch is left out
            self.epoch += 1
            self.pos = 0
        first = self.pos + self.rank * self.B
        rows = [self._window(i) for i in range(first, first + self.B)]
        w = torch.from_numpy(np.stack(rows).astype(np.int64))
        g = None
        if self.num_pauses:  # the pause positions depend only on which windows these are
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, first // self.B, 7))
        x, y = pause.pause_pretrain_batch(w, self.num_pauses, self.pause_id, g)
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
        """A state of this loader's data and geometry: another's is refused (UserError)."""
        ours = self.state_dict()
        for key in ("block_size", "num_windows", "num_pauses"):
            if state[key] != ours[key]:
                raise UserError(f"the checkpoint's loader has {key}={state[key]}, this run's "
                                f"has {ours[key]}: resume with the same --data (or "
                                "--builtin_docs), --block_size and --pause_frac")
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self.pos = state["pos"]
        self.real_tokens = state["real_tokens"]
        self.pause_tokens = state["pause_tokens"]


def to_device(x, y, device):
    """Pinned host memory lets the copy to the GPU run asynchronously (non_blocking) while the
    GPU still works on the previous micro-step."""
    pin = torch.device(device).type == "cuda"
    return tuple((t.pin_memory() if pin else t).to(device, non_blocking=pin) for t in (x, y))
