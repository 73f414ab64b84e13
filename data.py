"""
Data: the tokenizer (GPT-2's BPE or plain bytes, both with <|endoftext|> and <|pause|>).
"""
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
