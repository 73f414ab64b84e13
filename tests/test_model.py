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
    assert pause_generate(m, prefix, 4, 60, 20, stop_ids=()) == \
        m.generate(torch.tensor([prefix + [60] * 4]), 20, temperature=0.0, banned_ids={60})[0, 7:].tolist()
    stop = full[3]
    got = pause_generate(m, prefix, 4, 60, 20, stop_ids={stop})
    assert stop not in got and len(got) <= 20
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pause_generate(m, prefix, 4, 70, 5)


def test_generate_rejects_overlong_prompt():
    m = tiny_model()
    with pytest.raises(ValueError, match="exceeds the context of 64"):
        m.generate(torch.zeros(1, 60, dtype=torch.long), 10)


def test_optimizer_groups_and_mfu():
    m = tiny_model()
    opt = m.configure_optimizers(0.1, 1e-3)
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params(False)
    n = m.num_params()
    assert m.flops_per_token(64) == 6 * n + 12 * 2 * 32 * 64
    assert m.estimate_mfu(1000.0, m.flops_per_token(64) * 2000.0) == pytest.approx(0.5)
