"""GPT-2's weights in and out (gpt2.py), offline: checkpoints in the Hugging Face layout are built
here with random weights, and the downloads go to a local HTTP server."""
import http.server
import json
import math
import threading
from dataclasses import asdict

import pytest
import torch

from tools import gpt2
from tools.checkpoint import load_pretrained
from tools.export import export_hf
from model import GPT, GPTConfig
from tools.common import UserError
from tools.safetensors_io import load_file

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=48)
VOCAB = 257  # in the file; the byte tokenizer has one more id, <|pause|> = 257, like GPT-2's 50257


def hf_state_dict(seed=0, vocab=VOCAB, n_layer=2, n_embd=32, n_positions=48, **_):
    """Random weights named and shaped as in the hub's GPT-2 files: Conv1D weights (in, out),
    biases everywhere, and the old causal-mask buffers."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2
    C = n_embd
    sd = {"wte.weight": r(vocab, C), "wpe.weight": r(n_positions, C),
          "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(n_layer):
        for name, shape in [("ln_1", (C,)), ("ln_2", (C,)), ("attn.c_attn", (C, 3 * C)),
                            ("attn.c_proj", (C, C)), ("mlp.c_fc", (C, 4 * C)),
                            ("mlp.c_proj", (4 * C, C))]:
            w = 1 + r(*shape) if name.startswith("ln") else r(*shape)
            sd[f"h.{i}.{name}.weight"], sd[f"h.{i}.{name}.bias"] = w, r(shape[-1])
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, n_positions, n_positions))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return sd


def hf_config(vocab=VOCAB, activation="gelu_new", **shape):
    return {"model_type": "gpt2", "vocab_size": vocab, "activation_function": activation,
            "n_inner": None, "layer_norm_epsilon": 1e-5, **SHAPE, **shape}


def write_hf_dir(folder, sd, config, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    sd = {prefix + k: v for k, v in sd.items()}
    if prefix:  # files saved by transformers also hold the (tied) output layer
        sd["lm_head.weight"] = sd[prefix + "wte.weight"]
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def gpt2_forward(sd, n_head, idx, tanh=True):
    """GPT-2's forward pass written from its definition, on the Hugging Face tensors: Conv1D
    x @ W + b, LayerNorm, causal softmax attention, GELU (its tanh formula), tied output."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def conv1d(x, name):
        return x @ sd[name + ".weight"] + sd[name + ".bias"]

    def gelu(x):
        if tanh:
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    T = idx.size(1)
    x = sd["wte.weight"][idx] + sd["wpe.weight"][:T]
    C = x.size(-1)
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("h.")})
    causal = torch.ones(T, T).tril().bool()
    for i in range(n_layer):
        q, k, v = conv1d(ln(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(C, -1)
        q, k, v = (t.view(*t.shape[:2], n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // n_head)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + conv1d(y, f"h.{i}.attn.c_proj")
        x = x + conv1d(gelu(conv1d(ln(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    return ln(x, "ln_f") @ sd["wte.weight"].T


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_import_gives_gpt2s_logits(tmp_path, prefix, one_thread):
    sd = hf_state_dict()
    folder = write_hf_dir(tmp_path / "ckpt", sd, hf_config(), prefix)
    assert gpt2.hf_config(str(folder)) == dict(n_layer=2, n_head=2, n_embd=32, block_size=48,
                                               bias=True, gelu="tanh")
    model = gpt2.from_pretrained(str(folder), VOCAB + 1).eval()
    idx = torch.randint(0, VOCAB, (3, 48), generator=torch.Generator().manual_seed(1))
    logits = model(idx)[0]
    assert torch.allclose(logits[..., :VOCAB], gpt2_forward(sd, 2, idx), atol=1e-4, rtol=1e-4)
    # The pause row (and the padding) start as the mean embedding, so the pause's logit is the
    # mean of the real tokens' logits.
    wte = model.wte.weight
    assert wte.shape == (320, 32) and torch.equal(wte[:VOCAB], sd["wte.weight"])
    assert torch.allclose(wte[VOCAB:], sd["wte.weight"].mean(0).expand(320 - VOCAB, -1))
    assert torch.allclose(logits[..., VOCAB], logits[..., :VOCAB].mean(-1), atol=1e-4)


def finetuned_checkpoint(path, seed=0, **config):
    """A checkpoint as finetune.py writes it, with random weights (biases and gains included)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=48, vocab_size=258, n_layer=2, n_head=2, n_embd=32, **config)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save({"model": model.state_dict(), "model_config": asdict(cfg), "tokenizer": "byte",
                "pause_id": 257, "pause_frac": 0.0, "finetune_config": {}}, path)
    return model.eval()


def test_export_then_import_is_bitwise_exact(tmp_path, one_thread):
    model = finetuned_checkpoint(tmp_path / "ckpt.pt", bias=True, gelu="tanh")
    out = export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 320 and config["n_positions"] == 48
    assert config["activation_function"] == "gelu_pytorch_tanh" and config["pause_token_id"] == 257
    sd = load_file(out / "model.safetensors")
    assert sd["transformer.h.1.mlp.c_fc.weight"].shape == (32, 128)  # Conv1D: (in, out)
    assert "lm_head.weight" not in sd  # tied to the token embedding: stored once
    idx = torch.randint(0, 258, (2, 48), generator=torch.Generator().manual_seed(0))
    # What transformers computes from these files: GPT-2's forward on them.
    assert torch.allclose(gpt2_forward(sd, 2, idx), model(idx)[0], atol=1e-4, rtol=1e-4)

    back = gpt2.from_pretrained(str(out), 258).eval()
    theirs, ours = back.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert not torch.allclose(back.wte.weight[257], back.wte.weight[:257].mean(0))  # pause kept
    assert torch.equal(back(idx)[0], model(idx)[0])
    with pytest.raises(UserError, match="config.json"):
        export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")


def test_export_of_a_model_without_biases_keeps_its_logits(tmp_path, one_thread):
    model = finetuned_checkpoint(tmp_path / "ckpt.pt", seed=1)  # model.py's defaults: no biases
    out = export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    sd = load_file(out / "model.safetensors")
    assert not sd["transformer.h.0.attn.c_attn.bias"].any()
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu"
    idx = torch.randint(0, 258, (2, 48), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gpt2_forward(sd, 2, idx, tanh=False), model(idx)[0], atol=1e-4)
    back = gpt2.from_pretrained(str(out), 258).eval()
    assert torch.allclose(back(idx)[0], model(idx)[0], atol=1e-5)


# ---- downloads, against a local HTTP server

class _Files(http.server.BaseHTTPRequestHandler):
    files, requests = {}, []

    def do_GET(self):
        self.requests.append(self.path)
        if self.path not in self.files:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.files[self.path])))
        self.end_headers()
        self.wfile.write(self.files[self.path])

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A local stand-in for huggingface.co serving a small checkpoint under the name gpt2."""
    src = write_hf_dir(tmp_path / "src", hf_state_dict(), hf_config())
    _Files.files = {f"/gpt2/resolve/main/{f}": (src / f).read_bytes() for f in gpt2.FILES}
    _Files.requests = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setattr(gpt2, "URL", base + "/{name}/resolve/main/{file}")
    yield src, base
    httpd.shutdown()


def test_download_by_name_then_from_the_cache(hub, tmp_path, one_thread):
    src, _ = hub
    cache = tmp_path / "cache"
    assert gpt2.hf_config("gpt2", cache)["n_embd"] == 32
    assert _Files.requests == ["/gpt2/resolve/main/config.json"]  # the config alone
    model = gpt2.from_pretrained("gpt2", VOCAB + 1, cache)
    assert sorted(p.name for p in (cache / "gpt2").iterdir()) == sorted(gpt2.FILES)
    assert len(_Files.requests) == 2
    gpt2.from_pretrained("gpt2", VOCAB + 1, cache)  # already there: nothing fetched
    assert len(_Files.requests) == 2
    local = gpt2.from_pretrained(str(src), VOCAB + 1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  local.state_dict().values()))


def test_load_pretrained_by_name_fetches_config_and_weights(hub, tmp_path, monkeypatch,
                                                           one_thread):
    src = write_hf_dir(tmp_path / "full", hf_state_dict(vocab=50257, n_layer=1),
                       hf_config(vocab=50257, n_layer=1))
    _Files.files = {f"/gpt2/resolve/main/{f}": (src / f).read_bytes() for f in gpt2.FILES}
    monkeypatch.chdir(tmp_path)  # the default cache, data_cache/gpt2, is relative
    model, tok, carried = load_pretrained("", "gpt2")
    assert tok.name == "gpt2" and model.config.vocab_size == 50258
    assert carried == {"pause_frac": 0.0, "num_pauses": None}  # GPT-2 itself: StdPT
    assert sorted(p.name for p in (tmp_path / "data_cache" / "gpt2" / "gpt2").iterdir()) == \
        sorted(gpt2.FILES)


def test_a_failed_download_names_the_url_and_the_way_out(hub, tmp_path):
    _, base = hub
    with pytest.raises(UserError) as e:
        gpt2.download("gpt2-medium", tmp_path)
    msg = str(e.value)
    assert f"{base}/gpt2-medium/resolve/main/config.json" in msg
    assert "pytorch_model.bin" in msg and "DIR" in msg


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(UserError, match="gpt2, gpt2-medium, gpt2-large, gpt2-xl"):
        gpt2.from_pretrained("gpt3", 258)
    with pytest.raises(UserError, match="gpt2, gpt2-medium, gpt2-large, gpt2-xl"):
        gpt2.download("gpt3", tmp_path)
    sd, config = hf_state_dict(), hf_config()

    def refused(name, sd, config, vocab_size=258):
        folder = write_hf_dir(tmp_path / name, sd, config)
        with pytest.raises(UserError) as e:
            gpt2.from_pretrained(str(folder), vocab_size)
        return str(e.value)
    folder = write_hf_dir(tmp_path / "no_weights", sd, config)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(UserError, match="no model.safetensors or .* or pytorch_model.bin"):
        gpt2.from_pretrained(str(folder), 258)
    msg = refused("shape", {**sd, "h.1.mlp.c_fc.weight": torch.zeros(32, 100)}, config)
    assert "h.1.mlp.c_fc.weight" in msg and "(32, 100)" in msg and "(32, 128)" in msg
    msg = refused("missing", {k: v for k, v in sd.items() if k != "h.0.ln_2.bias"}, config)
    assert "h.0.ln_2.bias" in msg
    assert "h.2.ln_1.weight" in refused("extra", {**sd, "h.2.ln_1.weight": sd["ln_f.weight"]},
                                        config)
    assert "tokenizer of 50258 ids" in refused("vocab", sd, config, vocab_size=50258)
    assert "activation_function 'relu'" in refused("act", sd, hf_config(activation="relu"))
    assert "scale_attn_by_inverse_layer_idx" in refused(
        "scale", sd, {**config, "scale_attn_by_inverse_layer_idx": True})
    untied = {**sd, "lm_head.weight": torch.zeros_like(sd["wte.weight"])}
    assert "lm_head.weight" in refused("untied", untied, config)
