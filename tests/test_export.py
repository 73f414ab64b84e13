"""The export to Hugging Face's layout (tools/export.py) and safetensors (tools/safetensors_io.py),
without transformers: the files are checked against hand-built bytes, tiktoken, and a small
byte-level BPE encoder written here from the format's definition."""
import json
import struct
from dataclasses import asdict

import pytest
import regex
import torch

from data import EOT, PAUSE, get_tokenizer
from model import GPT, GPTConfig
from tools import gpt2
from tools.checkpoint import configuration_name, load_checkpoint, load_pretrained
from tools.common import UserError
from tools.export import FILES, bytes_to_unicode, export_hf, main, tokenizer_files
from tools.safetensors_io import load_file, save_file

TEXTS = ["Hello world", "a<|pause|><|pause|> b<|pause|>", "x <|endoftext|>\n\n  y<|endoftext|>",
         "naïve café 日本語 🙂 Ωmega", "  \t\n   tabs  and   runs \r\n\n\n", "<|pause|>",
         "'s 're 'll 123 4567 ...!!", " <|pause|> <|endoftext|>  ", "<|paus|> <|endoftext"]


def checkpoint(path, tokenizer="gpt2", pause_frac=0.1, num_pauses=10, seed=0, block_size=32):
    """A checkpoint as finetune.py writes it (num_pauses None: as train.py writes it), with
    random weights; a one-layer model, since the GPT-2 vocabulary alone is 50304 rows."""
    tok = get_tokenizer(tokenizer)
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=block_size, vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                    n_embd=16, bias=True, gelu="tanh")
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ckpt = {"model": model.state_dict(), "model_config": asdict(cfg), "tokenizer": tokenizer,
            "pause_id": tok.pause_id, "pause_frac": pause_frac}
    if num_pauses is None:
        ckpt.update(optimizer={}, loader={}, step=1)
    else:
        ckpt["finetune_config"] = {"num_pauses": num_pauses}
    torch.save(ckpt, path)
    return model.eval()


# ---- safetensors

def hand_built(entries, metadata=None):
    """A safetensors file's bytes, put together from the format's definition."""
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": offsets}
              for name, (dtype, shape, offsets, _) in entries.items()}
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(e[3] for e in entries.values())


def test_safetensors_reads_hand_built_bytes(tmp_path):
    floats = struct.pack("<6f", 1.5, -2.0, 0.25, 3.0, 1e-3, -7.5)
    ints = struct.pack("<2q", -3, 2 ** 40)
    half = struct.pack("<e", 0.5)
    path = tmp_path / "a.safetensors"
    path.write_bytes(hand_built({"w": ("F32", [2, 3], [0, 24], floats),
                                 "i": ("I64", [2], [24, 40], ints),
                                 "h": ("F16", [], [40, 42], half),
                                 "e": ("F32", [0, 4], [42, 42], b"")}, {"format": "pt"}))
    t = load_file(path)
    assert t.keys() == {"w", "i", "h", "e"}
    assert torch.equal(t["w"], torch.tensor([[1.5, -2.0, 0.25], [3.0, 1e-3, -7.5]]))
    assert t["i"].tolist() == [-3, 2 ** 40] and t["i"].dtype == torch.int64
    assert t["h"].dtype == torch.float16 and t["h"].shape == () and t["h"].item() == 0.5
    assert t["e"].shape == (0, 4)


def test_safetensors_writes_the_format(tmp_path):
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t()  # not contiguous: written in C order
    b = torch.tensor([7, -1], dtype=torch.int32)
    save_file({"w": w, "b": b}, tmp_path / "b.safetensors", {"format": "pt"})
    blob = (tmp_path / "b.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0  # the tensors start aligned
    header = json.loads(blob[8:8 + n])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["w"] == {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert header["b"] == {"dtype": "I32", "shape": [2], "data_offsets": [16, 24]}
    assert blob[8 + n:] == struct.pack("<4f", 1, 3, 2, 4) + struct.pack("<2i", 7, -1)
    back = load_file(tmp_path / "b.safetensors")
    assert torch.equal(back["w"], w) and torch.equal(back["b"], b)
    bf = torch.randn(3, 5).bfloat16()
    save_file({"x": bf}, tmp_path / "c.safetensors")
    assert torch.equal(load_file(tmp_path / "c.safetensors")["x"], bf)


def test_safetensors_agrees_with_the_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(4, 3), "b": torch.arange(5), "c": torch.randn(2).half(),
               "d": torch.randn(3, 2).bfloat16(), "e": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "ours.safetensors", {"format": "pt"})
    theirs = st.load_file(tmp_path / "ours.safetensors")
    assert theirs.keys() == tensors.keys()
    assert all(torch.equal(theirs[k], v) and theirs[k].dtype == v.dtype for k, v in tensors.items())
    st.save_file(tensors, tmp_path / "theirs.safetensors", {"format": "pt"})
    ours = load_file(tmp_path / "theirs.safetensors")
    assert all(torch.equal(ours[k], v) and ours[k].dtype == v.dtype for k, v in tensors.items())


@pytest.mark.parametrize("damage", ["short", "cut", "junk", "header", "offsets"])
def test_a_damaged_safetensors_file_is_named(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(4, 4)}, path)
    blob = path.read_bytes()
    path.write_bytes({"short": blob[:5], "cut": blob[:-10], "junk": b"\x89PNG" * 40,
                      "header": blob[:8] + b"{not json" + blob[17:],
                      "offsets": blob.replace(b"[0,64]", b"[0,60]")}[damage])
    with pytest.raises(UserError, match="model.safetensors"):
        load_file(path)


# ---- the tokenizer files, against tiktoken

def bpe_encode(text, vocab, merges, added):
    """Byte-level BPE from the written tables, as the format defines it: split out the added
    tokens, split the rest with GPT-2's pattern, write each piece's bytes as GPT-2's characters,
    then merge the adjacent pair of lowest merge rank until none is left."""
    chars = bytes_to_unicode()
    rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|"""
                            r"""\s+(?!\S)|\s+""")
    ids = []
    for part in regex.split("(" + "|".join(map(regex.escape, added)) + ")", text):
        if part in added:
            ids.append(added[part])
            continue
        for piece in pattern.findall(part):
            word = [chars[b] for b in piece.encode("utf-8")]
            while len(word) > 1:
                pairs = [(rank.get(p, len(rank)), i) for i, p in enumerate(zip(word, word[1:]))]
                best, i = min(pairs)
                if best == len(rank):
                    break
                word[i:i + 2] = [word[i] + word[i + 1]]
            ids += [vocab[w] for w in word]
    return ids


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_tokenizer_files_encode_like_tiktoken(name):
    tok = get_tokenizer(name)
    files = tokenizer_files(tok, 32)
    vocab = json.loads(files["vocab.json"])
    merges = files["merges.txt"].splitlines()
    assert merges[0] == "#version: 0.2"
    merges = merges[1:]
    fast = json.loads(files["tokenizer.json"])
    assert fast["model"]["vocab"] == vocab and fast["model"]["merges"] == merges
    added = {a["content"]: a["id"] for a in fast["added_tokens"]}
    assert added == {EOT: tok.eot_id, PAUSE: tok.pause_id}
    assert all(a["special"] and not a["normalized"] for a in fast["added_tokens"])
    # The vocabulary is tiktoken's ranks, each token's bytes written as GPT-2's characters.
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[c] for c in s): i for s, i in vocab.items() if s != EOT}
    assert ranks == tok.enc._mergeable_ranks
    assert len(merges) == {"gpt2": 50000, "byte": 0}[name]
    for text in TEXTS:
        assert bpe_encode(text, vocab, merges, added) == tok.enc.encode(text,
                                                                      allowed_special="all")
    config = json.loads(files["tokenizer_config.json"])
    assert config["eos_token"] == EOT and config["additional_special_tokens"] == [PAUSE]
    assert config["added_tokens_decoder"][str(tok.pause_id)]["content"] == PAUSE


# ---- the export

def test_export_is_complete_and_carries_the_pause_settings(tmp_path, one_thread):
    model = checkpoint(tmp_path / "ckpt.pt")
    out = export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 50304 and config["tokenizer"] == "gpt2"
    assert (config["pause_token_id"], config["pause_frac"], config["num_pauses"]) == (50257, 0.1,
                                                                                      10)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == 50256
    assert generation["suppress_tokens"] == list(range(50257, 50304))
    weights = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in weights  # tied: stored once, as the token embedding
    assert weights["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # Conv1D: (in, out)

    back, tok, carried = load_pretrained("", str(out))
    assert tok.name == "gpt2" and carried == {"pause_frac": 0.1, "num_pauses": 10}
    assert configuration_name(carried) == "PausePT_PauseFT"
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("frac, m_ft, name", [(0.0, None, "StdPT"), (0.1, 0, "PausePT_StdFT"),
                                              (0.0, 4, "StdPT_PauseFT")])
def test_the_configuration_survives_the_round_trip(tmp_path, frac, m_ft, name):
    checkpoint(tmp_path / "ckpt.pt", "byte", pause_frac=frac, num_pauses=m_ft)
    _, _, direct = load_pretrained(str(tmp_path / "ckpt.pt"), "")
    out = export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    model, tok, carried = load_pretrained("", str(out))
    assert carried == direct == {"pause_frac": frac, "num_pauses": m_ft}
    assert configuration_name(carried) == name
    assert tok.name == "byte" and model.config.vocab_size == 258  # not GPT-2's tokenizer


def test_gpt2s_own_files_are_stdpt(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16,
                                                    "n_layer": 1, "n_head": 2, "n_positions": 8}))
    tok = get_tokenizer("gpt2")
    _, hf = gpt2.read_hf_config(str(folder))
    assert gpt2.carried_settings(hf, tok, "config.json") == {"pause_frac": 0.0,
                                                             "num_pauses": None}
    for bad in [{"pause_token_id": 7}, {"pause_frac": 1.5}, {"num_pauses": -1},
                {"num_pauses": "10"}]:
        with pytest.raises(UserError, match="config.json"):
            gpt2.carried_settings({**hf, **bad}, tok, "config.json")


def test_export_refusals_name_the_flag(tmp_path, capsys):
    checkpoint(tmp_path / "ckpt.pt", "byte")
    (tmp_path / "file").write_text("x")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")

    def refused(*argv):
        with pytest.raises(SystemExit):
            main(list(argv))
        return capsys.readouterr().err
    ckpt = str(tmp_path / "ckpt.pt")
    assert "--out" in refused("--ckpt", ckpt, "--out", str(tmp_path / "file"))
    assert "config.json" in refused("--ckpt", ckpt, "--out", str(taken))
    assert "--out" in refused("--ckpt", ckpt, "--out", str(tmp_path / "file" / "sub"))
    assert "--ckpt" in refused("--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"))
    assert "--ckpt" in refused("--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    assert (taken / "config.json").read_text() == "{}"  # nothing overwritten
    main(["--ckpt", ckpt, "--out", str(tmp_path / "o")])
    assert "tools.export" not in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(FILES)


def test_a_checkpoint_whose_config_disagrees_with_its_weights_is_named(tmp_path):
    checkpoint(tmp_path / "ckpt.pt", "byte")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    for change in [{"n_embd": 32}, {"n_layer": 2}, {"vocab_size": 300}, {"flash": True}]:
        torch.save({**ckpt, "model_config": {**ckpt["model_config"], **change}},
                   tmp_path / "bad.pt")
        with pytest.raises(UserError, match="bad.pt"):
            load_checkpoint(tmp_path / "bad.pt")


# ---- weights in: either layout, damaged files named

def write_layout(folder, sd, config, layout):
    """A Hugging Face directory with sd as transformers writes it: names prefixed, the tied
    output layer left out of safetensors (kept in the .bin), or safetensors in two shards."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    sd = {"transformer." + k: v for k, v in sd.items()}
    if layout == "bin":
        torch.save({**sd, "lm_head.weight": sd["transformer.wte.weight"]},
                   folder / "pytorch_model.bin")
    elif layout == "safetensors":
        save_file(sd, folder / "model.safetensors", {"format": "pt"})
    else:
        names = sorted(sd)
        half = {n: "model-00001-of-00002.safetensors" for n in names[:len(names) // 2]}
        rest = {n: "model-00002-of-00002.safetensors" for n in names[len(names) // 2:]}
        for shard in set(half.values()) | set(rest.values()):
            save_file({n: sd[n] for n, s in {**half, **rest}.items() if s == shard},
                      folder / shard, {"format": "pt"})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": {**half, **rest}}))
    return folder


def hub_like(seed=0, vocab=257):
    model = GPT(GPTConfig(block_size=8, vocab_size=vocab, n_layer=1, n_head=2, n_embd=16,
                          bias=True, gelu="tanh"))
    g = torch.Generator().manual_seed(seed)
    sd = {theirs: (torch.randn(model.state_dict()[ours].shape, generator=g).t()
                   if transposed else torch.randn(model.state_dict()[ours].shape, generator=g))
          for ours, theirs, transposed in gpt2.gpt2_names(model)}
    sd["wte.weight"] = sd["wte.weight"][:vocab]
    config = {"model_type": "gpt2", "vocab_size": vocab, "n_embd": 16, "n_layer": 1,
              "n_head": 2, "n_positions": 8, "activation_function": "gelu_new"}
    return sd, config


def test_init_from_reads_either_layout_alike(tmp_path):
    sd, config = hub_like()
    models = {layout: gpt2.from_pretrained(str(write_layout(tmp_path / layout, sd, config,
                                                            layout)), 258)
              for layout in ("bin", "safetensors", "shards")}
    first = models["bin"].state_dict()
    for model in models.values():
        assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layout, file", [("bin", "pytorch_model.bin"),
                                          ("safetensors", "model.safetensors")])
def test_damaged_weights_are_named(tmp_path, layout, file):
    sd, config = hub_like()
    folder = write_layout(tmp_path / "cut", sd, config, layout)
    blob = (folder / file).read_bytes()
    (folder / file).write_bytes(blob[:len(blob) // 2])
    with pytest.raises(UserError, match=file):
        gpt2.from_pretrained(str(folder), 258)
    (folder / file).write_bytes(b"not a weights file at all" * 3)
    with pytest.raises(UserError, match=file):
        gpt2.from_pretrained(str(folder), 258)
    (folder / file).unlink()
    with pytest.raises(UserError, match="model.safetensors or"):
        gpt2.from_pretrained(str(folder), 258)
