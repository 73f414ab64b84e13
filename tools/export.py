"""
A checkpoint of this project out to the Hugging Face GPT-2 layout, which transformers'
GPT2LMHeadModel loads: `python -m tools.prepare export --ckpt out/ckpt.pt --out out/hf`.
"""
from dataclasses import replace
from pathlib import Path

from model import GPT
from tools.checkpoint import load_checkpoint, save_checkpoint
from tools.common import UserError, write_json
from tools.gpt2 import FILES, gpt2_names


def export_hf(ckpt_path, out_dir):
    """Write a checkpoint of train.py or finetune.py as out_dir/config.json + pytorch_model.bin in
    the Hugging Face GPT-2 layout, which transformers' GPT2LMHeadModel loads.

    config.json's vocab_size is the padded size (50304 for gpt2): the file holds every row of the
    model as it was trained (its training loss spans the padded rows too), so transformers gives
    the same logits entry for entry and from_pretrained reads it back bitwise. The tokenizer has
    fewer ids (50258, <|pause|> = pause_token_id); the ids above it are never targets, and a
    generator should suppress them with the pause."""
    model, tok, _ = load_checkpoint(ckpt_path)
    out = Path(out_dir)
    for file in FILES:
        if (out / file).exists():
            raise UserError(f"{out / file} exists; remove it or choose another output directory")
    c = model.config
    if not c.bias:
        # GPT-2 always has biases: a model trained without them is the same one with zero biases.
        full = GPT(replace(c, bias=True))
        for name in full.load_state_dict(model.state_dict(), strict=False).missing_keys:
            full.state_dict()[name].zero_()
        model = full
    sd = model.state_dict()
    weights = {"transformer." + theirs: sd[ours].t().contiguous() if transposed else sd[ours]
               for ours, theirs, transposed in gpt2_names(model)}
    weights["lm_head.weight"] = weights["transformer.wte.weight"]  # tied: stored once
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "vocab_size": c.padded_vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd,
              "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
              "activation_function": {"tanh": "gelu_pytorch_tanh", "none": "gelu"}[c.gelu],
              "layer_norm_epsilon": 1e-5, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
              "attn_pdrop": c.dropout, "tie_word_embeddings": True, "bos_token_id": tok.eot_id,
              "eos_token_id": tok.eot_id, "pause_token_id": tok.pause_id}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(weights, out / "pytorch_model.bin")
    write_json(config, out / "config.json")
    return out
