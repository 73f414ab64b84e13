"""
Checkpoints, and the models built from them: one place for what train.py, finetune.py, sample.py
and the tools read and write. A checkpoint is a dict of tensors and plain values, read with
weights_only=True so that a malicious pickle cannot run code. train.py's are resumable
(optimizer, loader and RNG state); finetune.py's hold the finetuned model and its finetune_config.
GPT-2's weights (tools/gpt2.py) come in through load_model as well.
"""
import os

import torch

from data import get_tokenizer
from model import GPT, GPTConfig
from tools import gpt2
from tools.common import UserError, atomic_write


def save_checkpoint(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_kind(ckpt):
    """'pretraining' (train.py), 'finetuned' (finetune.py) or 'foreign' (anything else)."""
    if not isinstance(ckpt, dict) or not {"model", "model_config", "tokenizer"} <= ckpt.keys():
        return "foreign"
    if "finetune_config" in ckpt:
        return "finetuned"
    return "pretraining" if {"optimizer", "loader", "step"} <= ckpt.keys() else "foreign"


KINDS = {"pretraining": "train.py's, with optimizer and loader state", "finetuned": "finetune.py's"}


def read_checkpoint(path, device="cpu", kind=None):
    """The dict of a ckpt.pt written by train.py or finetune.py (of that kind, if given);
    anything else is refused, saying what was found there."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train one first with "
                         "`python train.py --out_dir DIR`")
    expected = "expected a ckpt.pt written by train.py or finetune.py"
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a damaged or foreign file fails in many ways inside the unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a checkpoint this project can read ({first}); "
                         f"{expected}") from None
    found = checkpoint_kind(ckpt)
    if found == "foreign":
        found = (f"a dict with the keys {', '.join(sorted(map(str, ckpt))[:8])}"
                 if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise UserError(f"{path}: not a checkpoint of this project: found {found}; {expected} "
                         "(a Hugging Face GPT-2 directory goes to --init_from)")
    if kind is not None and found != kind:
        raise UserError(f"{path} is a {found} checkpoint ({KINDS[found]}), but a {kind} one "
                         f"({KINDS[kind]}) is needed here")
    return ckpt


def load_checkpoint(path, device="cpu"):
    """(model, tokenizer, checkpoint dict) from a ckpt.pt written by train.py or finetune.py."""
    ckpt = read_checkpoint(path, device)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), get_tokenizer(ckpt["tokenizer"]), ckpt


def load_model(ckpt_path, init_from, device="cpu"):
    """(model, tokenizer, pause_frac) to finetune or sample from: a checkpoint of train.py or
    finetune.py (StdPT or PausePT by its pause_frac), or GPT-2's weights (a StdPT model)."""
    if init_from:
        tok = get_tokenizer("gpt2")  # GPT-2's vocabulary and <|pause|>, whose row gpt2.py adds
        return gpt2.from_pretrained(init_from, tok.vocab_size).to(device), tok, 0.0
    try:  # a foreign file is refused, saying what it holds and what a checkpoint holds
        model, tok, ckpt = load_checkpoint(ckpt_path, device)
    except UserError as e:
        raise UserError(f"--ckpt: {e}") from None
    if ckpt.get("pause_id") is None or tok.pause_id >= model.config.vocab_size:
        raise UserError(f"--ckpt {ckpt_path}: the model's vocabulary ({model.config.vocab_size} "
                         f"ids) has no pause token (the {tok.name} tokenizer's <|pause|> is id "
                         f"{tok.pause_id}); train.py's vocabulary has it")
    return model, tok, ckpt.get("pause_frac", 0.0)
