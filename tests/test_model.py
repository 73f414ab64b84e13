import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, PRESETS, config_from_preset
from pause import pause_generate


def tiny_model(seed=0, vocab_size=70, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=64, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def test_presets_parameter_counts():
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            counts[name] = GPT(config_from_preset(name, 50258)).num_params(non_embedding=False)
    assert counts["tiny"] < 10e6
    assert 120e6 < counts["130m"] < 135e6
    assert 0.95e9 < counts["1b"] < 1.05e9
    assert GPTConfig(vocab_size=50258).padded_vocab_size == 50304


def test_loss_ignores_exactly_the_minus_one_targets():
    m = tiny_model()
    idx = torch.randint(0, 70, (3, 20))
    y = torch.randint(0, 70, (3, 20))
    y[0, :5] = -1
    y[2, 7:] = -1
    logits, loss = m(idx, y)
    keep = y != -1
    expect = F.cross_entropy(logits[keep], y[keep])  # the mean over the kept positions only
    assert torch.allclose(loss, expect, atol=1e-6)
    # changing logits' targets at ignored positions changes nothing
    y2 = y.clone()
    y2[~keep] = -1
    assert torch.allclose(m(idx, y2)[1], loss)


def test_causal_outputs_do_not_see_the_future():
    m = tiny_model()
    idx = torch.randint(0, 70, (1, 30))
    a = m(idx)[0]
    idx2 = idx.clone()
    idx2[0, 20:] = (idx2[0, 20:] + 1) % 70
    b = m(idx2)[0]
    assert torch.allclose(a[0, :20], b[0, :20], atol=1e-5)
    assert not torch.allclose(a[0, 20:], b[0, 20:])


def greedy_by_full_rerun(model, idx, n, banned):
    """Plain twin of the KV cache: re-run the whole sequence for every new token."""
    for _ in range(n):
        logits = model(idx)[0][:, -1].clone()
        logits[:, model.config.vocab_size:] = float("-inf")
        logits[:, list(banned)] = float("-inf")
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
    return idx


@pytest.mark.parametrize("seed", range(4))
def test_kv_cache_generation_equals_full_rerun(seed):
    m = tiny_model(seed)
    idx = torch.randint(0, 70, (2, 9), generator=torch.Generator().manual_seed(seed))
    fast = m.generate(idx, 30, temperature=0.0, banned_ids={3})
    slow = greedy_by_full_rerun(m, idx, 30, {3})
    assert torch.equal(fast, slow)
    assert torch.equal(m.generate(idx, 30, temperature=0.0, banned_ids={3}, use_cache=False), slow)


def test_banned_and_padding_ids_never_produced():
    m = tiny_model(vocab_size=70)  # padded to 128: ids 70..127 are padding
    with torch.no_grad():
        # make the banned id and the padding the most likely outputs
        m.lm_head.weight[5] *= 50
        m.lm_head.weight[100] *= 80
    idx = torch.randint(0, 70, (4, 5))
    for temperature, top_k in [(0.0, None), (1.0, None), (2.0, 5)]:
        out = m.generate(idx, 40, temperature=temperature, top_k=top_k, banned_ids={5})
        new = out[:, 5:]
        assert (new < 70).all() and not (new == 5).any()
    # without the ban, the boosted id is what greedy decoding picks
    assert (m.generate(idx, 3, temperature=0.0)[:, 5:] == 5).any()


def test_stop_ids_and_pause_generate():
    m = tiny_model(1)
    prefix = [1, 2, 3]
    full = m.generate(torch.tensor([prefix + [60] * 4]), 20, temperature=0.0)[0, 7:].tolist()
    # pause_generate appends M_inf pauses, bans the pause, returns only the new tokens
    banned = m.generate(torch.tensor([prefix + [60] * 4]), 20, temperature=0.0, banned_ids={60})
    assert pause_generate(m, [prefix], 4, 60, 20, stop_ids=()) == [banned[0, 7:].tolist()]
    stop = full[3]
    [got] = pause_generate(m, [prefix], 4, 60, 20, stop_ids={stop})
    assert stop not in got and len(got) <= 20


def test_overlong_input_is_refused():
    # A programmer's mistake (the scripts fit prompts to the context at the door): an assert.
    m = tiny_model()
    with pytest.raises(AssertionError):
        m.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(AssertionError):
        m(torch.zeros(1, 65, dtype=torch.long))
    assert m.generate(torch.zeros(1, 60, dtype=torch.long), 4).shape == (1, 64)


def test_optimizer_groups_and_mfu():
    m = tiny_model()
    opt = m.configure_optimizers(0.1, 1e-3)
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params(False)
    n = m.num_params()
    assert m.flops_per_token(64) == 6 * n + 12 * 2 * 32 * 64
    assert m.estimate_mfu(1000.0, m.flops_per_token(64) * 2000.0) == pytest.approx(0.5)


# ---- batched decoding of prompts of different lengths (left padding), against batch-1 decoding

def left_padded(prompts, pad_id):
    """The prompts as one (B, T) batch, each pushed to the right end, and their pad_lens."""
    T = max(len(p) for p in prompts)
    rows = [[pad_id] * (T - len(p)) + list(p) for p in prompts]
    return torch.tensor(rows), [T - len(p) for p in prompts]


def mixed_prompts(seed, lens=(1, 7, 12, 3, 20, 12)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 70, (n,), generator=g).tolist() for n in lens]


def test_padding_changes_no_logit_of_a_real_token():
    m = tiny_model(2)
    prompts = mixed_prompts(2)
    idx, pad_lens = left_padded(prompts, pad_id=69)
    logits = m(idx, pad_lens=torch.tensor(pad_lens))[0]
    for row, p, n in zip(logits, prompts, pad_lens):
        alone = m(torch.tensor([p]))[0][0]
        assert torch.allclose(row[n:], alone, atol=1e-5)
        assert torch.isfinite(row).all()  # padding positions too: nothing divides 0 by 0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_generate_equals_batch1_token_for_token(seed, use_cache):
    m = tiny_model(seed)
    prompts = mixed_prompts(seed)
    # The stop id: a token that row 0 produces early, so rows stop at different steps.
    stop = m.generate(torch.tensor([prompts[0]]), 5, temperature=0.0)[0, -2].item()
    for stop_ids in [(), {stop}]:
        # The padding's ids must not matter: two different fillers give the same tokens.
        outs = []
        for pad_id in (0, 42):
            idx, pad_lens = left_padded(prompts, pad_id)
            outs.append(m.generate(idx, 25, temperature=0.0, banned_ids={3}, stop_ids=stop_ids,
                                   use_cache=use_cache, pad_lens=pad_lens))
        assert torch.equal(outs[0][:, idx.size(1):], outs[1][:, idx.size(1):])
        for row, p in zip(outs[0], prompts):
            alone = m.generate(torch.tensor([p]), 25, temperature=0.0, banned_ids={3},
                               stop_ids=stop_ids)[0, len(p):].tolist()
            new = row[idx.size(1):].tolist()
            assert new[:len(alone)] == alone
            # a row that stopped before the batch did repeats its stop id
            assert all(t == stop for t in new[len(alone):])
            if stop_ids and stop in alone:
                assert alone.index(stop) == len(alone) - 1


def test_generate_refuses_bad_pad_lens():
    m = tiny_model()
    idx = torch.zeros(2, 5, dtype=torch.long)
    for bad in ([0], [0, 5], [-1, 0]):
        with pytest.raises(AssertionError):
            m.generate(idx, 3, pad_lens=bad)


@pytest.mark.parametrize("num_pauses,where", [(0, "append"), (4, "append"), (3, "prepend")])
def test_pause_generate_on_a_list_equals_one_by_one(num_pauses, where):
    m = tiny_model(3)
    prompts = mixed_prompts(3, lens=(5, 1, 9, 2))
    stop = pause_generate(m, [prompts[2]], num_pauses, 60, 6, where=where)[0][-1]
    for stop_ids in [(), {stop}]:
        batched = pause_generate(m, prompts, num_pauses, 60, 12, where=where, stop_ids=stop_ids)
        singles = [pause_generate(m, [p], num_pauses, 60, 12, where=where, stop_ids=stop_ids)[0]
                   for p in prompts]
        assert batched == singles and all(stop not in b for b in batched if stop_ids)
    # 1-D tensors work as well
    tensors = [torch.tensor(p) for p in prompts]
    assert pause_generate(m, tensors, num_pauses, 60, 12, where=where) == \
        pause_generate(m, prompts, num_pauses, 60, 12, where=where)


def nanogpt_logits(m, idx):
    """nanoGPT's GPT written out with plain tensor operations (attention as an explicit masked
    softmax), reading the weights of m: an independent twin of model.GPT's forward."""
    c = m.config
    B, T = idx.shape
    hs = c.n_embd // c.n_head

    def ln(x, layer):
        return F.layer_norm(x, (c.n_embd,), layer.weight, layer.bias, 1e-5)

    def heads(t):
        return t.view(B, T, c.n_head, hs).transpose(1, 2)
    x = m.wte.weight[idx] + m.wpe.weight[:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for blk in m.blocks:
        q, k, v = (ln(x, blk.ln_1) @ blk.attn.c_attn.weight.T).split(c.n_embd, dim=2)
        att = (heads(q) @ heads(k).transpose(-2, -1)) / hs ** 0.5
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ heads(v)).transpose(1, 2).reshape(B, T, c.n_embd)
        x = x + y @ blk.attn.c_proj.weight.T
        h = F.gelu(ln(x, blk.ln_2) @ blk.mlp.c_fc.weight.T)
        x = x + h @ blk.mlp.c_proj.weight.T
    return ln(x, m.ln_f) @ m.wte.weight.T


@pytest.mark.parametrize("seed", range(2))
def test_forward_equals_nanogpt_written_out(seed):
    m = tiny_model(seed, n_layer=3)
    idx = torch.randint(0, 70, (2, 33), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = m(idx)[0]
        assert torch.allclose(logits, nanogpt_logits(m, idx), atol=1e-5)
        assert torch.allclose(m(idx, last_only=True)[0], logits[:, -1:], atol=1e-6)
