"""
Checkpoints, and the models built from them: one place for what train.py, finetune.py, sample.py
and the tools read and write. A checkpoint is a dict of tensors and plain values, read with
weights_only=True so that a malicious pickle cannot run code. train.py's are resumable
(optimizer, loader and RNG state); finetune.py's hold the finetuned model and its finetune_config.
GPT-2's weights (tools/gpt2.py) come in through load_pretrained as well.
"""
import os
from dataclasses import asdict

import torch

from data import get_tokenizer
from model import GPT, GPTConfig, PRESETS, config_from_preset
from tools import gpt2
from tools.common import UserError, atomic_write, require


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
    """(model, tokenizer, checkpoint dict) from a ckpt.pt written by train.py or finetune.py. A
    model_config that does not fit the weights beside it is refused, naming the file."""
    ckpt = read_checkpoint(path, device)
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        tok = get_tokenizer(ckpt["tokenizer"])
        # More ids than the tokenizer has could be sampled and not decoded (fewer: load_pretrained
        # says that the pause is missing).
        if model.config.vocab_size > tok.vocab_size:
            raise ValueError(f"vocab_size {model.config.vocab_size}, but the {tok.name} "
                             f"tokenizer has {tok.vocab_size} ids")
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        # load_state_dict lists every mismatch; its first lines name the first tensors.
        why = " ".join(str(e).split("\n")[:3]).strip() or type(e).__name__
        raise UserError(f"{path}: its model_config {ckpt['model_config']} does not fit the "
                         f"weights and tokenizer stored with it ({why}); the file was changed "
                         "after it was written: use the checkpoint as the run wrote it") from None
    return model.to(device), tok, ckpt


def checkpoint_settings(ckpt):
    """The pause settings a checkpoint's model was trained with: pause_frac of pretraining
    (M_pt = pause_frac x T; 0 for StdPT) and num_pauses, M_ft of finetuning (None when the model
    was not finetuned; 0 for StdFT)."""
    finetuned = ckpt.get("finetune_config")
    return {"pause_frac": float(ckpt.get("pause_frac", 0.0)),
            "num_pauses": (int(finetuned.get("num_pauses", 0))
                           if isinstance(finetuned, dict) else None)}


def configuration_name(carried):
    """The paper's name of a model with these pause settings (from checkpoint_settings or
    gpt2.carried_settings); a model not finetuned yet is named by its pretraining alone."""
    name = "PausePT" if carried["pause_frac"] > 0 else "StdPT"
    if carried["num_pauses"] is None:
        return name
    return name + ("_PauseFT" if carried["num_pauses"] > 0 else "_StdFT")


def load_pretrained(ckpt_path, init_from, device="cpu"):
    """(model, tokenizer, carried) to finetune, evaluate or sample from: a checkpoint of train.py
    or finetune.py, or init_from, a Hugging Face directory (an export of this project, GPT-2's
    own, or save_pretrained's) or a GPT-2 name. carried: the pause settings the model comes with,
    {"pause_frac": ..., "num_pauses": ...} as checkpoint_settings gives them; GPT-2's own weights
    are StdPT, not finetuned."""
    if init_from:
        folder, hf = gpt2.read_hf_config(init_from)
        try:
            tok = get_tokenizer(hf.get("tokenizer", "gpt2"))
        except ValueError as e:
            raise UserError(f"{folder / 'config.json'}: {e}") from None
        carried = gpt2.carried_settings(hf, tok, folder / "config.json")
        model = gpt2.from_pretrained(init_from, tok.vocab_size)  # a name: downloads the weights
        return model.to(device), tok, carried
    try:  # a foreign file is refused, saying what it holds and what a checkpoint holds
        model, tok, ckpt = load_checkpoint(ckpt_path, device)
    except UserError as e:
        raise UserError(f"--ckpt: {e}") from None
    if ckpt.get("pause_id") is None or tok.pause_id >= model.config.vocab_size:
        raise UserError(f"--ckpt {ckpt_path}: the model's vocabulary ({model.config.vocab_size} "
                         f"ids) has no pause token (the {tok.name} tokenizer's <|pause|> is id "
                         f"{tok.pause_id}); train.py's vocabulary has it")
    return model, tok, checkpoint_settings(ckpt)


# -----------------------------------------------------------------------------------------------
# What a train.py run starts from: a model's shape and weights (random, GPT-2's or a checkpoint's)
# and, on --resume, the checkpoint's state. cfg is train.py's TrainConfig. Each refuses what does
# not fit, naming the flag, before any training step.

def checked_model_config(cfg, vocab_size, ckpt, preset_given):
    """The model's shape: a preset with the flags' overrides; or GPT-2's or the
    checkpoint's, which the flags may repeat but not change (--block_size may
    cut the context)."""
    names = ("block_size", "n_layer", "n_head", "n_embd")
    flags = {k: getattr(cfg, k) for k in names if getattr(cfg, k)}
    if ckpt is None and not cfg.init_from:
        return config_from_preset(cfg.preset, vocab_size, dropout=cfg.dropout, **flags)
    shape = ckpt["model_config"] if ckpt else gpt2.hf_config(cfg.init_from)
    source = f"--resume: {cfg.out_dir}/ckpt.pt" if ckpt else f"--init_from {cfg.init_from}"
    config = GPTConfig(**{**shape, "vocab_size": vocab_size, "dropout": cfg.dropout})
    asked = {**PRESETS[cfg.preset], **flags} if preset_given else flags
    for k, v in asked.items():
        have = getattr(config, k)
        flag = f"--{k}" if k in flags else f"--preset {cfg.preset}"
        require(v == have or (v < have and k == "block_size"),
                f"{source} has {k}={have} but this run has {k}={v} ({flag}); the "
                "weights fix the model's shape: leave the flag out")
    return config


# Settings a resumed run may change, with a note: the steps then differ.
CHANGEABLE = ("batch_size", "total_batch_tokens", "max_steps", "max_tokens", "lr",
              "min_lr", "warmup_steps", "weight_decay", "beta2", "grad_clip")


def check_resume(ckpt, cfg, tok, world_size, master):
    """Refuse a checkpoint of another tokenizer or pause_frac; note what
    settings changed."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    for key, now in (("tokenizer", tok.name), ("pause_frac", cfg.pause_frac)):
        require(ckpt[key] == now,
                f"--resume: {path} was made with {key}={ckpt[key]}, this run has "
                f"{key}={now}; use the same data and flags, or another --out_dir")
    then = {**ckpt["config"], "world_size": ckpt.get("world_size", world_size)}
    now = {**asdict(cfg), "world_size": world_size}
    changed = [f"{k} {now[k]} (was {then[k]})"
               for k in (*CHANGEABLE, "world_size") if then.get(k, now[k]) != now[k]]
    if changed and master:
        print(f"note: resuming with {', '.join(changed)}. The data continues "
              "where it stopped, but the steps are no longer those of one "
              "uninterrupted run.")


def restore(ckpt, model, optimizer, loader, device, master):
    """Put a checkpoint's state into this run; returns its step and token counts."""
    model.load_state_dict(ckpt["model"])
    # Adam's moments from the checkpoint, its settings from the flags.
    ours = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, settings in zip(optimizer.param_groups, ours):
        group.update(settings)
    loader.load_state_dict(ckpt["loader"])  # refuses other data or windows
    if master:
        # Other ranks keep their own seeds: their random numbers only drive dropout.
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        cuda = ckpt["rng"].get("cuda")
        if cuda is not None and torch.device(device).type == "cuda":
            torch.cuda.set_rng_state(cuda.cpu(), device)
    return ckpt["step"], ckpt["tokens_seen"], ckpt["real_tokens_seen"]


def make_model(cfg, model_config, tok, device, rank):
    """Random weights from the seed, or GPT-2's."""
    torch.manual_seed(cfg.seed + rank)
    if not cfg.init_from:
        return GPT(model_config).to(device)
    model = gpt2.from_pretrained(cfg.init_from, tok.vocab_size, dropout=cfg.dropout)
    assert model.config == model_config  # the shape the flags were checked against
    return model.to(device)
