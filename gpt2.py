"""
GPT-2's weights in and out, so that pauses can be tried on a real pretrained model: the paper's
StdPT_PauseFT is pause-finetuning a model that was pretrained without pauses.

    from_pretrained("gpt2", vocab_size)   Hugging Face's GPT-2 checkpoint -> model.py's GPT
    export_hf("out/ckpt.pt", "out/hf")    a checkpoint of this project -> the Hugging Face layout

GPT-2 is model.py's GPT with biases and the tanh approximation of GELU: the same blocks under other
names. The files are the hub's config.json and pytorch_model.bin, read with torch.load's
weights_only=True (plain tensors, no code), so no new dependency is needed.
"""
import json
from dataclasses import replace
from pathlib import Path

import torch

from common import download as fetch, load_checkpoint, save_checkpoint, write_json
from model import GPT, GPTConfig

NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
URL = "https://huggingface.co/{name}/resolve/main/{file}"
FILES = ("config.json", "pytorch_model.bin")
# Hugging Face's names of the GELU model.py computes; gelu_new is GPT-2's own tanh formula, the
# same function as torch's approximate="tanh" up to float rounding.
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
# GPT-2's Conv1D layers store their weight as (in, out), the transpose of nn.Linear's (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_names(model):
    """The name mapping, written once and used both ways: (model.py name, GPT-2 name, transposed)
    for each tensor. GPT-2 calls the blocks h; the output layer is the token embedding (tied), so
    it has no entry of its own."""
    return [(name, name.replace("blocks.", "h.", 1), name.endswith(CONV1D))
            for name in model.state_dict() if name != "lm_head.weight"]


def download(name, cache_dir="data_cache/gpt2", files=FILES):
    """Fetch Hugging Face's checkpoint `name` into cache_dir/name (resumed if interrupted, skipped
    when already there); returns that directory."""
    if name not in NAMES:
        raise SystemExit(f"unknown GPT-2 checkpoint {name!r}; choose one of {', '.join(NAMES)}, "
                         f"or a directory holding {' and '.join(FILES)}")
    folder = Path(cache_dir) / name
    for file in files:
        try:
            fetch(URL.format(name=name, file=file), folder / file)
        except SystemExit as e:
            raise SystemExit(f"{e.code}\nWithout internet here: fetch {' and '.join(FILES)} from "
                             f"https://huggingface.co/{name} elsewhere, put both in a directory "
                             f"DIR and pass DIR instead of {name!r}.") from None
    return folder


def _folder(init_from, cache_dir, files=FILES):
    """The directory holding the checkpoint `init_from` (a name of NAMES, downloaded, or a DIR)."""
    if init_from in NAMES:
        return download(init_from, cache_dir, files)
    folder = Path(init_from)
    if not folder.is_dir():
        raise SystemExit(f"--init_from {init_from!r} is neither a GPT-2 checkpoint name "
                         f"({', '.join(NAMES)}) nor a directory holding {' and '.join(FILES)}")
    for file in files:
        if not (folder / file).is_file():
            raise SystemExit(f"{folder}: no {file}; a GPT-2 checkpoint directory holds "
                             f"{' and '.join(FILES)} (the Hugging Face layout)")
    return folder


def hf_config(init_from, cache_dir="data_cache/gpt2"):
    """GPTConfig's settings (all but vocab_size) for the checkpoint init_from, from its
    config.json. Settings that model.py does not have are refused, naming them."""
    path = _folder(init_from, cache_dir, files=FILES[:1]) / "config.json"
    try:
        hf = json.loads(path.read_text())
        n_embd, n_layer, n_head, n_positions = (hf[k] for k in
                                                ("n_embd", "n_layer", "n_head", "n_positions"))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    unsupported = {"model_type": (hf.get("model_type", "gpt2"), "gpt2"),
                   "n_inner": (hf.get("n_inner") or 4 * n_embd, 4 * n_embd),
                   "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), 1e-5),
                   "scale_attn_weights": (hf.get("scale_attn_weights", True), True),
                   "scale_attn_by_inverse_layer_idx":
                       (hf.get("scale_attn_by_inverse_layer_idx", False), False)}
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise SystemExit(f"{path}: {key} = {value!r}; model.py reproduces {supported!r} only")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise SystemExit(f"{path}: activation_function {act!r}; model.py has {sorted(ACTIVATIONS)}")
    return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=n_positions, bias=True,
                gelu=ACTIVATIONS[act])


def from_pretrained(init_from, vocab_size, cache_dir="data_cache/gpt2", dropout=0.0):
    """model.py's GPT with the weights of init_from (a name of NAMES or a DIR in the Hugging Face
    GPT-2 layout), for a tokenizer of vocab_size ids (50258 for gpt2: GPT-2's 50257 + <|pause|>)."""
    folder = _folder(init_from, cache_dir)
    config = GPTConfig(vocab_size=vocab_size, dropout=dropout, **hf_config(str(folder)))
    path = folder / "pytorch_model.bin"
    sd = torch.load(path, map_location="cpu", weights_only=True)
    # Files saved by transformers prefix every name with "transformer."; the hub's own files do not,
    # and they carry GPT-2's causal-mask buffers, which model.py has no use for.
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()
          if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    head = sd.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, sd.get("wte.weight")):
        raise SystemExit(f"{path}: lm_head.weight differs from wte.weight; model.py ties them")
    model = GPT(config)
    mapping = gpt2_names(model)
    unknown = sorted(set(sd) - {theirs for _, theirs, _ in mapping})
    missing = [theirs for _, theirs, _ in mapping if theirs not in sd]
    if unknown or missing:
        raise SystemExit(f"{path}: tensors missing: {missing or 'none'}; not GPT-2's: "
                         f"{unknown or 'none'} (for config.json's n_layer {config.n_layer})")
    params = model.state_dict()  # shares storage with the parameters: copying in loads them
    with torch.no_grad():
        for ours, theirs, transposed in mapping:
            want = params[ours].shape[::-1] if transposed else params[ours].shape
            t = sd[theirs]
            if ours == "wte.weight":
                rows = t.size(0)  # the vocabulary of the file: 50257 for GPT-2, padded in exports
                if t.size(1) != config.n_embd or not vocab_size - 1 <= rows <= want[0]:
                    raise SystemExit(f"{path}: {theirs} has shape {tuple(t.shape)}, expected "
                                     f"({vocab_size - 1} to {want[0]}, {config.n_embd}) for a "
                                     f"tokenizer of {vocab_size} ids")
                params[ours][:rows] = t
                # New rows (<|pause|> = 50257 and the padding) start as the mean of the file's
                # token embeddings. The row is tied: as input, the first pauses then look like an
                # ordinary token that means nothing in particular; as output, its logit is the
                # mean of the other tokens' logits (h . mean(W) = mean(h . W)), so it takes about
                # an average token's share of the probability, not an arbitrary one.
                params[ours][rows:] = t.mean(0)
            elif t.shape != want:
                raise SystemExit(f"{path}: {theirs} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(want)} from config.json")
            else:
                params[ours].copy_(t.t() if transposed else t)
    return model


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
            raise SystemExit(f"{out / file} exists; remove it or choose another output directory")
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
