"""
GPT-2's weights in and out, so that pauses can be tried on a real pretrained model: the paper's
StdPT_PauseFT is pause-finetuning a model that was pretrained without pauses.

    from_pretrained("gpt2", vocab_size)   Hugging Face's GPT-2 checkpoint -> model.py's GPT

GPT-2 is model.py's GPT with biases and the tanh approximation of GELU: the same blocks under other
names. The files are the hub's config.json and pytorch_model.bin, read with torch.load's
weights_only=True (plain tensors, no code), so no new dependency is needed.
"""
import json
from pathlib import Path

import torch

from model import GPT, GPTConfig
from tools.common import UserError, download as fetch

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
        raise UserError(f"unknown GPT-2 checkpoint {name!r}; choose one of {', '.join(NAMES)}, "
                         f"or a directory holding {' and '.join(FILES)}")
    folder = Path(cache_dir) / name
    for file in files:
        try:
            fetch(URL.format(name=name, file=file), folder / file)
        except UserError as e:
            raise UserError(f"{e}\nWithout internet here: fetch {' and '.join(FILES)} from "
                             f"https://huggingface.co/{name} elsewhere, put both in a directory "
                             f"DIR and pass DIR instead of {name!r}.") from None
    return folder


def _folder(init_from, cache_dir, files=FILES):
    """The directory holding the checkpoint `init_from` (a name of NAMES, downloaded, or a DIR)."""
    if init_from in NAMES:
        return download(init_from, cache_dir, files)
    folder = Path(init_from)
    if not folder.is_dir():
        raise UserError(f"--init_from {init_from!r} is neither a GPT-2 checkpoint name "
                         f"({', '.join(NAMES)}) nor a directory holding {' and '.join(FILES)}")
    for file in files:
        if not (folder / file).is_file():
            raise UserError(f"{folder}: no {file}; a GPT-2 checkpoint directory holds "
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
        raise UserError(f"{path}: not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    unsupported = {"model_type": (hf.get("model_type", "gpt2"), "gpt2"),
                   "n_inner": (hf.get("n_inner") or 4 * n_embd, 4 * n_embd),
                   "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), 1e-5),
                   "scale_attn_weights": (hf.get("scale_attn_weights", True), True),
                   "scale_attn_by_inverse_layer_idx":
                       (hf.get("scale_attn_by_inverse_layer_idx", False), False)}
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise UserError(f"{path}: {key} = {value!r}; model.py reproduces {supported!r} only")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise UserError(f"{path}: activation_function {act!r}; model.py has {sorted(ACTIVATIONS)}")
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
        raise UserError(f"{path}: lm_head.weight differs from wte.weight; model.py ties them")
    model = GPT(config)
    mapping = gpt2_names(model)
    unknown = sorted(set(sd) - {theirs for _, theirs, _ in mapping})
    missing = [theirs for _, theirs, _ in mapping if theirs not in sd]
    if unknown or missing:
        raise UserError(f"{path}: tensors missing: {missing or 'none'}; not GPT-2's: "
                         f"{unknown or 'none'} (for config.json's n_layer {config.n_layer})")
    params = model.state_dict()  # shares storage with the parameters: copying in loads them
    with torch.no_grad():
        for ours, theirs, transposed in mapping:
            want = params[ours].shape[::-1] if transposed else params[ours].shape
            t = sd[theirs]
            if ours == "wte.weight":
                rows = t.size(0)  # the vocabulary of the file: 50257 for GPT-2, padded in exports
                if t.size(1) != config.n_embd or not vocab_size - 1 <= rows <= want[0]:
                    raise UserError(f"{path}: {theirs} has shape {tuple(t.shape)}, expected "
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
                raise UserError(f"{path}: {theirs} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(want)} from config.json")
            else:
                params[ours].copy_(t.t() if transposed else t)
    return model
