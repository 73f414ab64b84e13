"""
Data: the tokenizer (GPT-2's BPE or plain bytes, both with <|endoftext|> and <|pause|>) and the
built-in world (an offline corpus and synthetic tasks).
"""
import random
import zlib
from dataclasses import dataclass

import tiktoken

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
