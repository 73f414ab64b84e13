"""
A checkpoint of this project out to Hugging Face's GPT-2 layout, complete: transformers'
AutoModelForCausalLM and AutoTokenizer, and lm-evaluation-harness's `hf` model, load the directory
with no other step.

    python -m tools.export --ckpt out_finetune/ckpt.pt --out out/hf

writes, into a new directory (or one without these files):
    model.safetensors       the weights (GPT-2's names; the tied output layer stored once)
    config.json             GPT-2's settings, and the pause settings the model was trained with:
                            pause_token_id, pause_frac (M_pt = pause_frac x T), num_pauses (M_ft,
                            null if the model was not finetuned), tokenizer ("gpt2" or "byte")
    generation_config.json  stop at <|endoftext|>; never emit <|pause|> or the padding ids
    tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
                            the model's tokenizer with <|pause|> an added special token

The tokenizer files are built from tiktoken's own encoding, with no new dependency: tiktoken's gpt2
ranks are GPT-2's vocabulary, their bytes written as GPT-2's byte-level characters, and its merges
are recovered from the ranks. The byte tokenizer becomes the same kind of file with 256 byte
tokens and no merges. Hugging Face's tokenizer encodes '<|pause|>' and '<|endoftext|>' written in
a text as the special tokens (tiktoken's encode with allowed_special="all"); this project's
tokenizer reads them as plain text. That is how a prompt template puts M_inf pauses in the prompt.
"""
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from data import EOT, PAUSE
from model import GPT
from tools.checkpoint import checkpoint_settings, load_checkpoint
from tools.common import (UserError, atomic_write, parse_config, require, require_writable_dir,
                          write_json)
from tools.gpt2 import gpt2_names
from tools.safetensors_io import save_file

FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
         "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class ExportConfig:
    ckpt: str = ""  # the checkpoint to export: a ckpt.pt of train.py or finetune.py
    out: str = ""   # the directory to write: new, or one that holds none of the export's files

    def check(self):
        require(self.ckpt, "--ckpt is required: a ckpt.pt of train.py or finetune.py")
        require(os.path.isfile(self.ckpt), f"--ckpt {self.ckpt}: no such file; train one with "
                "`python train.py --out_dir DIR` and pass DIR/ckpt.pt")
        require_writable_dir(self.out, "--out")
        clash = [f for f in FILES if os.path.exists(os.path.join(self.out, f))]
        require(not clash, f"--out {self.out} holds {', '.join(clash)} already; remove them "
                "or choose another directory (an export overwrites nothing)")


# -----------------------------------------------------------------------------------------------
# The tokenizer files. GPT-2's byte-level BPE writes each byte as a printable character, so that a
# token is a string: bytes_to_unicode is that map, from GPT-2's original encoder.py.

def bytes_to_unicode():
    """{byte: character}: printable bytes stand for themselves, the others (controls, space) are
    shifted to the characters from 256 on (space is 'Ġ', newline 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable}
    chars.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return chars


def token_string(token_bytes, chars):
    return "".join(chars[b] for b in token_bytes)


def split_in_two(token, ranks):
    """The merge that made `token`: BPE on its bytes with only the merges made before it leaves
    exactly two parts (as tiktoken's own BPE would encode the token's text one rank earlier)."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        assert rank < limit, f"{token!r} is not reachable by merges of lower rank"
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def bpe_tables(tok):
    """(vocab {token string: id}, merges ["left right", ...] in rank order) of a tokenizer of
    data.py, from its tiktoken ranks. Special tokens are not in these tables."""
    chars = bytes_to_unicode()
    ranks = tok.enc._mergeable_ranks
    vocab = {token_string(t, chars): i for t, i in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            left, right = split_in_two(token, ranks)
            merges.append(f"{token_string(left, chars)} {token_string(right, chars)}")
    return vocab, merges


def tokenizer_files(tok, block_size):
    """{file name: content} of the Hugging Face tokenizer for tok: the fast tokenizer.json, the
    slow tokenizer's vocab.json and merges.txt, and the settings that name the special tokens."""
    vocab, merges = bpe_tables(tok)
    vocab[EOT] = tok.eot_id  # GPT-2's vocab.json lists <|endoftext|>; the pause is added
    special = {tok.eot_id: EOT, tok.pause_id: PAUSE}
    # Special: split out of any text before the BPE, and skipped by decode(skip_special_tokens).
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True}
    added = [{"id": i, "content": text, **flags} for i, text in special.items()]
    # GPT-2's pre-tokenizer splits with tiktoken's gpt2 pattern ("use_regex").
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    bpe = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
           "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
           "ignore_merges": False, "vocab": vocab, "merges": merges}
    fast = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": byte_level,
            "post_processor": {**byte_level, "trim_offsets": False}, "decoder": byte_level,
            "model": bpe}
    names = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT,
             "additional_special_tokens": [PAUSE]}
    settings = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size,
                "add_prefix_space": False, "add_bos_token": False,
                "clean_up_tokenization_spaces": False,
                "added_tokens_decoder": {str(i): {"content": text, **flags}
                                         for i, text in special.items()},
                **names}
    return {"tokenizer.json": json.dumps(fast, ensure_ascii=False, indent=1) + "\n",
            "vocab.json": json.dumps(vocab, ensure_ascii=False) + "\n",
            "merges.txt": "#version: 0.2\n" + "".join(m + "\n" for m in merges),
            "tokenizer_config.json": json.dumps(settings, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(names, indent=2) + "\n"}


# -----------------------------------------------------------------------------------------------

def gpt2_weights(model):
    """The model's tensors under GPT-2's names, the output layer left out: it is the token
    embedding (tie_word_embeddings), and safetensors stores a tensor once."""
    c = model.config
    if not c.bias:
        # GPT-2 always has biases: a model trained without them is the same one with zero biases.
        full = GPT(replace(c, bias=True))
        for name in full.load_state_dict(model.state_dict(), strict=False).missing_keys:
            full.state_dict()[name].zero_()
        model = full
    sd = model.state_dict()
    return {"transformer." + theirs: sd[ours].t().contiguous() if transposed else sd[ours]
            for ours, theirs, transposed in gpt2_names(model)}


def export_hf(ckpt_path, out_dir):
    """Write a checkpoint of train.py or finetune.py to out_dir as FILES (see the top of this
    file); returns out_dir as a Path. Checked here as well as at main's door, since
    `python -m tools.prepare export` calls this directly.

    config.json's vocab_size is the padded size (50304 for gpt2): the file holds every row of the
    model as it was trained (its training loss spans the padded rows too), so transformers gives
    the same logits entry for entry and from_pretrained reads it back bitwise. The tokenizer has
    fewer ids (50258, <|pause|> = pause_token_id); the ids from the pause on are never targets,
    and generation_config.json suppresses them."""
    ExportConfig(str(ckpt_path), str(out_dir)).check()
    model, tok, ckpt = load_checkpoint(ckpt_path)
    carried = checkpoint_settings(ckpt)
    c = model.config
    if c.vocab_size != tok.vocab_size:
        raise UserError(f"{ckpt_path}: the model has {c.vocab_size} ids, its {tok.name} "
                         f"tokenizer {tok.vocab_size} (<|pause|> = {tok.pause_id}); only a model "
                         "of train.py's vocabulary has a tokenizer to export with it")
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "vocab_size": c.padded_vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd,
              "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
              "activation_function": {"tanh": "gelu_pytorch_tanh", "none": "gelu"}[c.gelu],
              "layer_norm_epsilon": 1e-5, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
              "attn_pdrop": c.dropout, "tie_word_embeddings": True, "bos_token_id": tok.eot_id,
              "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id,
              "pause_token_id": tok.pause_id, "tokenizer": tok.name, **carried}
    generation = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id,
                  "pad_token_id": tok.eot_id,
                  "suppress_tokens": list(range(tok.pause_id, c.padded_vocab_size))}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror})") from None
    save_file(gpt2_weights(model), out / "model.safetensors", {"format": "pt"})
    write_json(config, out / "config.json")
    write_json(generation, out / "generation_config.json")
    for name, text in tokenizer_files(tok, c.block_size).items():
        data = text.encode("utf-8")
        atomic_write(out / name, lambda f: f.write(data))
    return out


def main(argv=None):
    cfg = parse_config(ExportConfig, __doc__, argv)
    try:
        out = export_hf(cfg.ckpt, cfg.out)
    except UserError as e:
        raise SystemExit(f"export.py: error: {e}")
    config = json.loads((out / "config.json").read_text())
    print(f"{out}: {cfg.ckpt} in Hugging Face's GPT-2 layout ({', '.join(FILES)}), with the "
          f"model's own {config['tokenizer']} tokenizer; load it with AutoModelForCausalLM and "
          f"AutoTokenizer, lm_eval --model hf --model_args pretrained={out}, or --init_from {out}")


if __name__ == "__main__":
    main()
