"""
GPT-2's weights in and out, so that pauses can be tried on a real pretrained model: the paper's
StdPT_PauseFT is pause-finetuning a model that was pretrained without pauses.

    from_pretrained("gpt2", vocab_size)   Hugging Face's GPT-2 checkpoint -> model.py's GPT

GPT-2 is model.py's GPT with biases and the tanh approximation of GELU: the same blocks under other
names. A checkpoint directory holds config.json and the weights in one of WEIGHTS: safetensors
(read by tools/safetensors_io.py, no code in the file), possibly in shards, or pytorch_model.bin,
read with torch.load's weights_only=True (plain tensors, no code); no new dependency is needed.
A name of NAMES is downloaded from the hub (config.json and pytorch_model.bin).
"""
import json
from pathlib import Path

import torch

from model import GPT, GPTConfig
from tools.common import UserError, download as fetch
from tools.safetensors_io import load_file

NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
URL = "https://huggingface.co/{name}/resolve/main/{file}"
FILES = ("config.json", "pytorch_model.bin")  # what a download by name fetches
# The weights files a directory may hold, the first found is read: transformers 5's save_pretrained
# writes model.safetensors only (or shards listed in the index), older tools pytorch_model.bin.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
LAYOUT = "config.json and model.safetensors or pytorch_model.bin"
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
                         f"({', '.join(NAMES)}) nor a directory holding {LAYOUT}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json; a GPT-2 checkpoint directory holds {LAYOUT} "
                         "(the Hugging Face layout)")
    return folder


def weights_file(folder):
    """The first of WEIGHTS in folder."""
    found = [folder / name for name in WEIGHTS if (folder / name).is_file()]
    if not found:
        raise UserError(f"{folder}: no {' or '.join(WEIGHTS)}; a GPT-2 checkpoint directory "
                         f"holds {LAYOUT} (the Hugging Face layout)")
    return found[0]


def read_weights(path):
    """{name: tensor} of a weights file of WEIGHTS; a damaged or foreign file is a UserError
    naming it."""
    if path.name.endswith(".safetensors"):
        return load_file(path)
    if path.name.endswith(".index.json"):  # shards: {"weight_map": {tensor name: file}}
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{path}: not a safetensors index ({type(e).__name__}: {e})") from None
        sd = {}
        for shard in shards:
            if not (path.parent / shard).is_file():
                raise UserError(f"{path} lists {shard}, which is not in {path.parent}")
            sd.update(load_file(path.parent / shard))
        return sd
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file fails in many ways inside the unpickler
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable PyTorch weights file ({why}); download or "
                         "export it again") from None
    if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
        raise UserError(f"{path}: holds a {type(sd).__name__}, not a dict of tensors")
    return sd


def read_hf_config(init_from, cache_dir="data_cache/gpt2"):
    """(directory, its config.json as a dict) of the checkpoint init_from (a name or a DIR)."""
    folder = _folder(init_from, cache_dir, files=FILES[:1])
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a GPT-2 config.json ({type(e).__name__}: {e})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path}: not a GPT-2 config.json (a JSON {type(hf).__name__})")
    return folder, hf


def carried_settings(hf, tok, path):
    """The pause settings a config.json carries (tools/export.py writes them), as
    checkpoint.checkpoint_settings gives them: {"pause_frac", "num_pauses"}. GPT-2's own files
    carry none: a StdPT model, not finetuned. A pause_token_id other than the tokenizer's is
    refused: the model's pause row would be another id."""
    pause_id = hf.get("pause_token_id", tok.pause_id)
    if pause_id != tok.pause_id:
        raise UserError(f"{path}: pause_token_id {pause_id!r}, but the {tok.name} tokenizer's "
                         f"<|pause|> is {tok.pause_id}")
    frac = hf.get("pause_frac") or 0.0
    m_ft = hf.get("num_pauses")
    if not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        raise UserError(f"{path}: pause_frac {frac!r}; expected a number in [0, 1)")
    if m_ft is not None and (not isinstance(m_ft, int) or m_ft < 0):
        raise UserError(f"{path}: num_pauses {m_ft!r}; expected M_ft, an integer >= 0, or null")
    return {"pause_frac": float(frac), "num_pauses": m_ft}


def hf_config(init_from, cache_dir="data_cache/gpt2"):
    """GPTConfig's settings (all but vocab_size) for the checkpoint init_from, from its
    config.json. Settings that model.py does not have are refused, naming them."""
    folder, hf = read_hf_config(init_from, cache_dir)
    path = folder / "config.json"
    try:
        n_embd, n_layer, n_head, n_positions = (hf[k] for k in
                                                ("n_embd", "n_layer", "n_head", "n_positions"))
    except (KeyError, TypeError) as e:
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
    path = weights_file(folder)
    sd = read_weights(path)
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
