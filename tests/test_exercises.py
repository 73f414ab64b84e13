"""The graders of the course's exercises (docs/teaching.md): `python -m pytest -m exercises`.

Each exercise is graded by behaviour that any correct implementation has, through the public
function a student writes; no grader replays this repository's random draws. A check is a function
of the implementation it grades, so the unmarked tests at the end can run the same checks against
correct implementations written differently (they must pass) and against wrong ones (they must
fail), and can make the student version (tests/student_version.py) and grade it.
"""
import ast
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import data
import pause
from model import GPT, GPTConfig

IGNORE = pause.IGNORE
P = 999  # the pause id of the token-only checks: the tokens drawn there are below it
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed):
    return torch.Generator().manual_seed(seed)


def hypergeometric_mean_se(N, M, B):
    """Surviving pauses in a row: M pause slots drawn from N + M, of which the first N are kept.
    Their number is hypergeometric; the mean of B rows has this mean and standard error."""
    mean = N * M / (N + M)
    var = M * (N / (N + M)) * (M / (N + M)) * (N / (N + M - 1))
    return mean, math.sqrt(var / B)


def assert_near(observed, expected, se, what):
    assert abs(observed - expected) < 5 * se, \
        f"{what}: {observed:.4f}, expected {expected:.4f} within 5 standard errors ({5 * se:.4f})"


def assert_pause_positions(is_pause, M, what):
    """Every position of a row of N is a pause with probability M/(N + M): the N + M slots are
    exchangeable, so each is one of the M pause slots with that probability."""
    B, N = is_pause.shape
    p = M / (N + M)
    freq = is_pause.double().mean(0)
    worst = int((freq - p).abs().argmax())
    assert_near(freq[worst].item(), p, math.sqrt(p * (1 - p) / B), f"{what} at position {worst}")


# -----------------------------------------------------------------------------------------------
# Exercise: pause.insert_pauses (paper Sec. 3.1)

def keeps_shape_dtype_and_real_tokens(insert_pauses):
    for shape, dtype, M in [((4, 50), torch.long, 5), ((3, 7), torch.int32, 20),
                            ((2, 1), torch.long, 1)]:
        tokens = torch.randint(0, 500, shape, generator=gen(1)).to(dtype)
        before = tokens.clone()
        out = insert_pauses(tokens, M, P, gen(0))
        assert out.shape == tokens.shape and out.dtype == tokens.dtype
        assert torch.equal(tokens, before), "the input was changed"
        for r_in, r_out in zip(tokens, out):
            real = r_out[r_out != P]
            assert torch.equal(real, r_in[:len(real)]), "the real tokens are not a prefix"


def one_dimensional_input(insert_pauses):
    tokens = torch.randint(0, 500, (10,), generator=gen(2))
    outs = torch.stack([insert_pauses(tokens, 5, P, gen(seed)) for seed in range(1000)])
    assert outs.shape == (1000, 10) and outs.dtype == tokens.dtype
    for out in outs:
        real = out[out != P]
        assert torch.equal(real, tokens[:len(real)])
    mean, se = hypergeometric_mean_se(10, 5, 1000)
    assert_near((outs == P).sum(1).double().mean().item(), mean, se, "mean surviving pauses (1-D)")


def surviving_pauses_mean(insert_pauses):
    for N, M, B in [(32, 8, 4000), (6, 20, 4000)]:
        out = insert_pauses(torch.zeros(B, N, dtype=torch.long), M, P, gen(N))
        mean, se = hypergeometric_mean_se(N, M, B)
        assert_near((out == P).sum(1).double().mean().item(), mean, se,
                    f"mean surviving pauses (N={N}, M={M})")


def each_position_pause_probability(insert_pauses):
    for N, M in [(32, 8), (6, 20)]:
        out = insert_pauses(torch.zeros(4000, N, dtype=torch.long), M, P, gen(N + 1))
        assert_pause_positions(out == P, M, f"pause frequency (N={N}, M={M})")


def pause_patterns_have_their_probability(insert_pauses):
    # N=5, M=3: a pattern with k pauses among the 5 kept slots leaves 3-k pauses in the 3 trimmed
    # slots, so it has probability C(3, 3-k) / C(8, 3); more than 3 pauses is impossible.
    N, M, B = 5, 3, 8000
    out = insert_pauses(torch.zeros(B, N, dtype=torch.long), M, P, gen(5))
    codes = ((out == P).long() * (2 ** torch.arange(N))).sum(1)
    freq = torch.bincount(codes, minlength=2 ** N).double() / B
    for code in range(2 ** N):
        k = bin(code).count("1")
        q = math.comb(M, M - k) / math.comb(N + M, M) if k <= M else 0.0
        assert_near(freq[code].item(), q, math.sqrt(max(q * (1 - q), 1e-12) / B),
                    f"frequency of the pause pattern {code:05b}")


def same_seed_same_output_rows_differ(insert_pauses):
    tokens = torch.randint(0, 500, (16, 40), generator=gen(3))
    a, b = insert_pauses(tokens, 8, P, gen(3)), insert_pauses(tokens, 8, P, gen(3))
    assert torch.equal(a, b), "the same generator seed gave different pauses"
    assert not torch.equal(a, insert_pauses(tokens, 8, P, gen(4))), "the generator is not used"
    assert len({tuple(r.tolist()) for r in (a == P)}) > 1, "every row got the same pause slots"
    torch.manual_seed(0)
    c = insert_pauses(tokens, 8, P)  # without a generator: torch's global one
    torch.manual_seed(0)
    assert torch.equal(c, insert_pauses(tokens, 8, P))


def zero_pauses_and_bad_input(insert_pauses):
    tokens = torch.randint(0, 500, (3, 9), generator=gen(6))
    out = insert_pauses(tokens, 0, P, gen(0))
    assert torch.equal(out, tokens) and out.dtype == tokens.dtype
    with pytest.raises(ValueError):
        insert_pauses(tokens, -1, P)


INSERT_PAUSES_CHECKS = [keeps_shape_dtype_and_real_tokens, one_dimensional_input,
                        surviving_pauses_mean, each_position_pause_probability,
                        pause_patterns_have_their_probability, same_seed_same_output_rows_differ,
                        zero_pauses_and_bad_input]


@pytest.mark.exercises
@pytest.mark.parametrize("check", INSERT_PAUSES_CHECKS, ids=lambda c: c.__name__)
def test_insert_pauses(check):
    check(pause.insert_pauses)


# -----------------------------------------------------------------------------------------------
# Exercise: pause.pause_targets (paper Sec. 3.1, S_ignore)

@pytest.mark.exercises
def test_pause_targets_by_hand():
    y = torch.tensor([[4, P, 5, P], [P, P, 1, 2]])
    assert pause.pause_targets(y, P).tolist() == [[4, IGNORE, 5, IGNORE], [IGNORE, IGNORE, 1, 2]]
    # A pause-pretraining row: the position whose input is a pause still predicts the next real
    # token; nothing predicts a pause.
    window = torch.tensor([10, 11, P, 12, P, P, 13])
    x, y = window[:-1], pause.pause_targets(window[1:], P)
    assert x.tolist() == [10, 11, P, 12, P, P] and y.tolist() == [11, -1, 12, -1, -1, 13]


@pytest.mark.exercises
@pytest.mark.parametrize("shape", [(50,), (4, 30)])
def test_pause_targets_ignores_exactly_the_pauses(shape):
    targets = torch.randint(0, 10, shape, generator=gen(7))  # the pause id 7 is among them
    before = targets.clone()
    out = pause.pause_targets(targets, 7)
    assert torch.equal(targets, before), "the input was changed"
    assert out.shape == targets.shape and out.dtype == targets.dtype
    assert torch.equal(out == IGNORE, targets == 7)
    assert torch.equal(out[targets != 7], targets[targets != 7])


# -----------------------------------------------------------------------------------------------
# Exercise: pause.pause_pretrain_batch, the pause step of the pretraining loader (paper Sec. 3.1)

def batch_rows_and_targets(pause_pretrain_batch):
    windows = torch.randint(0, 500, (6, 41), generator=gen(8))
    before = windows.clone()
    x, y = pause_pretrain_batch(windows, 8, P, gen(0))
    assert x.shape == y.shape == (6, 40) and x.dtype == y.dtype == torch.long
    assert torch.equal(windows, before), "the windows were changed"
    assert not (y == P).any(), "a target is a pause"
    for w, xr, yr in zip(windows, x, y):
        real = xr[xr != P]
        assert torch.equal(real, w[:len(real)]), "x's real tokens are not the window's first tokens"
        # Each target is the next token of the pause-injected window, IGNORE where that is a pause.
        assert torch.equal(yr[:-1], torch.where(xr[1:] == P, IGNORE, xr[1:]))
        assert yr[-1] in (IGNORE, w[len(real)]), "the last target is not the next real token"


def no_pauses_is_a_plain_shift(pause_pretrain_batch):
    windows = torch.randint(0, 500, (3, 17), generator=gen(9))
    x, y = pause_pretrain_batch(windows, 0, P)
    assert torch.equal(x, windows[:, :-1]) and torch.equal(y, windows[:, 1:])


def batch_pause_statistics(pause_pretrain_batch):
    # The whole window of T + 1 gets the pauses: x shows its first T slots, and the last slot is a
    # pause exactly when the last target is ignored.
    B, T, M = 4000, 32, 8
    x, y = pause_pretrain_batch(torch.zeros(B, T + 1, dtype=torch.long), M, P, gen(10))
    is_pause = torch.cat([x == P, y[:, -1:] == IGNORE], 1)
    mean, se = hypergeometric_mean_se(T + 1, M, B)
    assert_near(is_pause.sum(1).double().mean().item(), mean, se, "mean surviving pauses")
    assert_pause_positions(is_pause, M, "pause frequency")


def batch_same_seed_same_output_rows_differ(pause_pretrain_batch):
    windows = torch.randint(0, 500, (16, 41), generator=gen(11))
    a, b = pause_pretrain_batch(windows, 8, P, gen(1)), pause_pretrain_batch(windows, 8, P, gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], pause_pretrain_batch(windows, 8, P, gen(2))[0])
    assert len({tuple(r.tolist()) for r in (a[0] == P)}) > 1, "every row got the same pause slots"


PRETRAIN_BATCH_CHECKS = [batch_rows_and_targets, no_pauses_is_a_plain_shift,
                         batch_pause_statistics, batch_same_seed_same_output_rows_differ]


@pytest.mark.exercises
@pytest.mark.parametrize("check", PRETRAIN_BATCH_CHECKS, ids=lambda c: c.__name__)
def test_pause_pretrain_batch(check):
    check(pause.pause_pretrain_batch)


# -----------------------------------------------------------------------------------------------
# Exercise: pause.finetune_example (paper Sec. 3.2)

@pytest.mark.exercises
def test_finetune_example_by_hand():
    x, y = pause.finetune_example([5, 6, 7], [8, 9], 3, P)
    assert x.tolist() == [5, 6, 7, P, P, P, 8] and y.tolist() == [-1, -1, -1, -1, -1, 8, 9]
    x, y = pause.finetune_example(torch.tensor([5, 6, 7]), torch.tensor([8, 9]), 0, P)  # StdFT
    assert x.tolist() == [5, 6, 7, 8] and y.tolist() == [-1, -1, 8, 9]
    x, y = pause.finetune_example([5, 6, 7], [8], 2, P, where="prepend")
    assert x.tolist() == [P, P, 5, 6, 7] and y.tolist() == [-1, -1, -1, -1, 8]
    assert x.dtype == y.dtype == torch.long


@pytest.mark.exercises
@pytest.mark.parametrize("where", ["append", "prepend"])
def test_finetune_example_loss_only_on_the_answer(where):
    g = gen(12)
    for _ in range(20):
        n, t, m = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
        m -= 1  # 0..7 pauses
        prefix = torch.randint(0, 500, (n,), generator=g).tolist()
        target = torch.randint(0, 500, (t,), generator=g).tolist()
        x, y = pause.finetune_example(prefix, target, m, P, where=where)
        prompt = prefix + [P] * m if where == "append" else [P] * m + prefix
        assert x.tolist() == prompt + target[:-1]
        # The last prompt position predicts the first answer token; nothing before it has a loss.
        assert y.tolist() == [IGNORE] * (n + m - 1) + target


@pytest.mark.exercises
def test_finetune_example_refusals():
    assert pause.finetune_example([1] * 4, [2, 3], 3, P, block_size=8)[0].numel() == 8
    for prefix, target, m, options in [([1] * 5, [2, 3], 3, {"block_size": 8}),  # 9 positions
                                       ([1, 2], [], 2, {}),  # no answer
                                       ([], [2], 0, {}),  # nothing to predict the answer from
                                       ([1], [2], -3, {}),
                                       ([1], [2], 1, {"where": "middle"})]:
        with pytest.raises(ValueError):
            pause.finetune_example(prefix, target, m, P, **options)


# -----------------------------------------------------------------------------------------------
# Decoding graders: a tiny random GPT in float32, against plain loops that re-run the whole
# sequence for every new token and take the argmax over the allowed ids.

def tiny_gpt(seed, boost=()):
    """A random GPT whose matrices have standard deviation 1 (not GPT-2's 0.02): its greedy outputs
    change from step to step instead of repeating one token, and the top two logits are far apart
    compared with float32 rounding. boost: ids made likely outputs (their output row scaled up)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=70, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0)
        for i in boost:
            model.lm_head.weight[i] *= 3
    return model


def greedy_rerun(model, ids, n, banned=(), stop_ids=()):
    """The plain loop: up to n greedy tokens after ids, never a banned or a padding id, stopping
    before the first stop id."""
    ids, new = list(ids), []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids + new]))[0][0, -1].clone()
        logits[model.config.vocab_size:] = float("-inf")
        logits[list(banned)] = float("-inf")
        t = int(logits.argmax())
        if t in stop_ids:
            break
        new.append(t)
    return new


def prompts_of(lengths, seed):
    g = gen(seed)
    return [torch.randint(0, 60, (n,), generator=g).tolist() for n in lengths]


# -----------------------------------------------------------------------------------------------
# Exercise: model.GPT.generate, decoding with a KV cache

def expected_rows(model, prompts, n, banned, stop_ids):
    """Each row's n new tokens as GPT.generate returns them: greedy decoding until the row's first
    stop id, which it then repeats."""
    rows = []
    for p in prompts:
        row = []
        for t in greedy_rerun(model, p, n, banned):
            row.append(row[-1] if row and row[-1] in stop_ids else t)
        rows.append(row)
    return rows


def assert_generated(out, width, rows, n, stop_ids):
    new = out[:, width:].tolist()
    length = len(new[0])
    assert 1 <= length <= n, f"{length} new tokens, asked for {n}"
    for got, want in zip(new, rows):
        assert got == want[:length]
        assert length == n or got[-1] in stop_ids, "stopped before every row produced a stop id"


@pytest.mark.exercises
@pytest.mark.parametrize("use_cache", [True, False])
def test_gpt_generate_equals_full_rerun(use_cache):
    for seed in range(3):
        model = tiny_gpt(seed)
        prompts = prompts_of([9, 9], seed)
        out = model.generate(torch.tensor(prompts), 30, temperature=0.0, banned_ids={3},
                             use_cache=use_cache)
        assert out.shape == (2, 39) and torch.equal(out[:, :9], torch.tensor(prompts))
        assert out[:, 9:].tolist() == [greedy_rerun(model, p, 30, {3}) for p in prompts]
        # top_k=1 keeps only the most likely token: sampling becomes greedy decoding
        assert torch.equal(model.generate(torch.tensor(prompts), 30, temperature=1.0, top_k=1,
                                          banned_ids={3}, use_cache=use_cache), out)


@pytest.mark.exercises
def test_gpt_generate_never_banned_or_padding_ids():
    model = tiny_gpt(0, boost=(5,))  # vocabulary 70, padded to 128: ids 70..127 are padding
    idx = torch.tensor(prompts_of([5] * 4, 1))
    # At temperature 100 sampling is nearly uniform: padding would be almost half the output.
    for temperature, top_k in [(0.0, None), (1.0, None), (100.0, None), (2.0, 5)]:
        new = model.generate(idx, 40, temperature=temperature, top_k=top_k, banned_ids={5})[:, 5:]
        assert (new < 70).all() and not (new == 5).any()
    assert (model.generate(idx, 3, temperature=0.0)[:, 5:] == 5).any(), "the boost did not work"


@pytest.mark.exercises
def test_gpt_generate_stop_ids():
    model = tiny_gpt(1)
    prompts = prompts_of([6, 6, 6], 2)
    free = [greedy_rerun(model, p, 20) for p in prompts]
    for stop_ids in [{free[0][3]}, {free[0][3], free[1][10]}, {free[2][19]}]:
        out = model.generate(torch.tensor(prompts), 20, temperature=0.0, stop_ids=stop_ids)
        assert_generated(out, 6, expected_rows(model, prompts, 20, (), stop_ids), 20, stop_ids)


@pytest.mark.exercises
def test_gpt_generate_left_padding_equals_batch_of_one():
    model = tiny_gpt(2)
    prompts = prompts_of([5, 9, 2, 7], 3)
    width = max(map(len, prompts))
    pads = prompts_of([width - len(p) for p in prompts], 4)  # any ids: nothing may attend to them
    idx = torch.tensor([pad + p for pad, p in zip(pads, prompts)])
    pad_lens = [width - len(p) for p in prompts]
    free = [greedy_rerun(model, p, 15, {3}) for p in prompts]
    for stop_ids in [set(), {free[1][4], free[3][8]}]:
        out = model.generate(idx, 15, temperature=0.0, banned_ids={3}, stop_ids=stop_ids,
                             pad_lens=pad_lens)
        assert torch.equal(out[:, :width], idx)
        assert_generated(out, width, expected_rows(model, prompts, 15, {3}, stop_ids), 15, stop_ids)


# -----------------------------------------------------------------------------------------------
# Exercise: pause.pause_generate, pause-inference (paper Sec. 3.3)

PAUSE = 66


def with_pauses(prompt, m, where):
    return list(prompt) + [PAUSE] * m if where == "append" else [PAUSE] * m + list(prompt)


@pytest.mark.exercises
@pytest.mark.parametrize("where", ["append", "prepend"])
def test_pause_generate_one_prompt(where):
    model = tiny_gpt(3, boost=(PAUSE,))  # a likely output, were it not banned
    cases = list(zip([0, 4, 10], prompts_of([3, 6, 1], 5)))
    assert any(PAUSE in greedy_rerun(model, with_pauses(p, m, where), 12) for m, p in cases)
    for m, prompt in cases:
        free = greedy_rerun(model, with_pauses(prompt, m, where), 12, {PAUSE})
        for stop_ids, banned in [((), ()), ({free[5]}, ()), ((), {free[0]})]:
            want = greedy_rerun(model, with_pauses(prompt, m, where), 12, {PAUSE, *banned},
                                stop_ids)
            for given in (prompt, torch.tensor(prompt)):
                got = pause.pause_generate(model, given, m, PAUSE, 12, where=where,
                                           stop_ids=stop_ids, banned_ids=banned)
                assert got == want and all(type(t) is int for t in got)


@pytest.mark.exercises
@pytest.mark.parametrize("where", ["append", "prepend"])
def test_pause_generate_batch_equals_one_by_one(where):
    model = tiny_gpt(4, boost=(PAUSE,))
    prompts = prompts_of([4, 11, 1, 7], 6)
    free = [greedy_rerun(model, with_pauses(p, 5, where), 12, {PAUSE}) for p in prompts]
    stop_ids = {free[0][2], free[2][7]}
    want = [greedy_rerun(model, with_pauses(p, 5, where), 12, {PAUSE}, stop_ids) for p in prompts]
    for given in (prompts, [torch.tensor(p) for p in prompts]):
        got = pause.pause_generate(model, given, 5, PAUSE, 12, where=where, stop_ids=stop_ids)
        assert got == want


# -----------------------------------------------------------------------------------------------
# Checks of the graders themselves (not exercises): correct implementations written differently
# pass them, wrong ones fail them, and the student version fails them with NotImplementedError.

def insert_pauses_randperm(tokens, num_pauses, pause_id, generator=None):
    """Correct, written differently: per row, the first M entries of a random permutation of the
    N + M slots are the pause slots."""
    if num_pauses < 0:
        raise ValueError("num_pauses must be >= 0")
    rows = tokens.reshape(-1, tokens.shape[-1])
    N, out = rows.size(1), torch.empty_like(rows)
    for r, row in enumerate(rows):
        seq = torch.full((N + num_pauses,), pause_id, dtype=rows.dtype)
        is_pause = torch.zeros(N + num_pauses, dtype=torch.bool)
        is_pause[torch.randperm(N + num_pauses, generator=generator)[:num_pauses]] = True
        seq[~is_pause] = row
        out[r] = seq[:N]
    return out.view(tokens.shape)


def insert_pauses_multinomial(tokens, num_pauses, pause_id, generator=None):
    """Correct, written differently: M slots per row drawn without replacement by multinomial, the
    real tokens poured into the other slots in row-major order."""
    if num_pauses < 0:
        raise ValueError("num_pauses must be >= 0")
    if num_pauses == 0:
        return tokens.clone()
    rows = tokens.reshape(-1, tokens.shape[-1])
    (B, N), S = rows.shape, rows.size(1) + num_pauses
    slots = torch.multinomial(torch.ones(B, S), num_pauses, generator=generator)
    is_pause = torch.zeros(B, S, dtype=torch.bool).scatter_(1, slots, True)
    full = torch.full((B, S), pause_id, dtype=rows.dtype)
    full[~is_pause] = rows.reshape(-1)  # each row has exactly N free slots
    return full[:, :N].reshape(tokens.shape)


# Wrong implementations, each with the check that must catch it.

def at_the_end(tokens, m, pause_id, generator=None):
    """The right number of pauses, all at the end of the row."""
    counts = (insert_pauses_multinomial(tokens, m, pause_id, generator) == pause_id).sum(-1)
    out, N = tokens.clone(), tokens.shape[-1]
    for row, k in zip(out.view(-1, N), counts.view(-1).tolist()):
        row[N - k:] = pause_id
    return out


def overwrite(tokens, m, pause_id, generator=None):
    """Pauses written over the tokens instead of shifting them right."""
    mask = insert_pauses_multinomial(tokens, m, pause_id, generator) == pause_id
    return tokens.masked_fill(mask, pause_id)


def bernoulli(tokens, m, pause_id, generator=None):
    """Each slot a pause with probability M/(N + M), independently: the number inserted varies."""
    N = tokens.shape[-1]
    out = tokens.clone()
    for row in out.view(-1, N):
        real = iter(row.tolist())
        is_pause = torch.rand(N, generator=generator) < m / (N + m)
        row[:] = torch.tensor([pause_id if p else next(real) for p in is_pause.tolist()])
    return out


def no_trim(tokens, m, pause_id, generator=None):
    """All N + M slots returned."""
    return insert_pauses_multinomial(torch.cat([tokens, tokens[..., :m]], -1), m, pause_id,
                                     generator)


def all_pauses_kept(tokens, m, pause_id, generator=None):
    """M pauses among the N positions, none trimmed away (the last M tokens dropped instead)."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    (B, N), m = rows.shape, min(m, rows.size(1))
    slots = torch.multinomial(torch.ones(B, N), m, generator=generator)
    is_pause = torch.zeros(B, N, dtype=torch.bool).scatter_(1, slots, True)
    out = torch.full_like(rows, pause_id)
    out[~is_pause] = rows[:, :N - m].reshape(-1)
    return out.view(tokens.shape)


def global_generator(tokens, m, pause_id, generator=None):
    """The generator passed in is ignored."""
    return insert_pauses_multinomial(tokens, m, pause_id)


def same_slots_every_row(tokens, m, pause_id, generator=None):
    """One draw of pause slots shared by every row."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    first = insert_pauses_multinomial(torch.arange(rows.size(1)), m, -1, generator)
    out = rows[:, first.clamp(min=0)].masked_fill(first == -1, pause_id)
    return out.view(tokens.shape)


def no_check(tokens, m, pause_id, generator=None):
    """Negative M accepted."""
    return insert_pauses_multinomial(tokens, max(m, 0), pause_id, generator)


WRONG_INSERT_PAUSES = [(at_the_end, each_position_pause_probability),
                       (overwrite, keeps_shape_dtype_and_real_tokens),
                       (bernoulli, pause_patterns_have_their_probability),
                       (no_trim, keeps_shape_dtype_and_real_tokens),
                       (all_pauses_kept, surviving_pauses_mean),
                       (global_generator, same_seed_same_output_rows_differ),
                       (same_slots_every_row, same_seed_same_output_rows_differ),
                       (no_check, zero_pauses_and_bad_input)]


@pytest.mark.parametrize("alternative", [insert_pauses_randperm, insert_pauses_multinomial],
                         ids=lambda f: f.__name__)
def test_graders_pass_a_correct_insert_pauses_written_differently(alternative):
    for check in INSERT_PAUSES_CHECKS:
        check(alternative)


@pytest.mark.parametrize("wrong, caught_by", WRONG_INSERT_PAUSES, ids=lambda f: f.__name__)
def test_graders_fail_a_wrong_insert_pauses(wrong, caught_by):
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        caught_by(wrong)


def pretrain_batch_from(insert_pauses, shift_pauses=True):
    def pause_pretrain_batch(windows, num_pauses, pause_id, generator=None):
        w = insert_pauses(windows, num_pauses, pause_id, generator)
        y = w[:, 1:] if shift_pauses else windows[:, 1:]
        return w[:, :-1], y.masked_fill(y == pause_id, IGNORE)
    return pause_pretrain_batch


def test_graders_of_the_loader_step():
    for check in PRETRAIN_BATCH_CHECKS:
        check(pretrain_batch_from(insert_pauses_multinomial))
    wrong = [(pretrain_batch_from(insert_pauses_multinomial, shift_pauses=False),
              batch_rows_and_targets),  # targets from the window without its pauses
             (lambda w, m, p, g=None: (insert_pauses_multinomial(w[:, :-1], m, p, g), w[:, 1:]),
              batch_rows_and_targets),  # pauses in x only, the targets a plain shift
             (lambda w, m, p, g=None: pretrain_batch_from(insert_pauses_multinomial)(
                 w, max(m - 1, 0), p, g), batch_pause_statistics)]  # M_pt - 1 pauses
    for fn, caught_by in wrong:
        with pytest.raises(AssertionError):
            caught_by(fn)


def grade(student, env, *args):
    """Import every module of a copy, then run its exercise tests there: {test name: its failure
    element, None if it passed}, and the log."""
    report = student / "report.xml"
    modules = ", ".join(sorted(p.stem for p in student.glob("*.py")))
    args = ["tests/test_exercises.py", "-q", "-m", "exercises", *args, "-p", "no:cacheprovider",
            f"--junitxml={report}"]
    run = subprocess.run([sys.executable, "-c", f"import {modules}\nimport pytest\n"
                          f"raise SystemExit(pytest.main({args!r}))"],
                         cwd=student, env=env, capture_output=True, text=True)
    assert report.exists(), run.stdout + run.stderr  # no report: a module did not import
    cases = ET.parse(report).getroot().iter("testcase")
    return {case.get("name"): case.find("failure") for case in cases}, run.stdout


def test_student_version_fails_the_exercises_and_imports(tmp_path):
    # On the reference the exercise tests pass: they are the tests above.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    script = str(ROOT / "tests" / "student_version.py")
    student, one = tmp_path / "student", tmp_path / "one"
    made = subprocess.run([sys.executable, script, "--out", str(student)], capture_output=True,
                          text=True, env=env)
    assert made.returncode == 0, made.stderr
    tree = ast.parse((student / "tests" / "test_exercises.py").read_text())
    hidden = [f for f in tree.body if getattr(f, "name", "").startswith("insert_pauses_")]
    assert len(hidden) == 2 and all(len(f.body) == 2 and isinstance(f.body[1], ast.Raise)
                                    for f in hidden), "a solution was left in the student version"
    results, log = grade(student, env)
    exercises = {name for name, f in globals().items() if name.startswith("test_")
                 and any(m.name == "exercises" for m in getattr(f, "pytestmark", []))}
    assert {name.split("[")[0] for name in results} == exercises, log
    for name, failure in results.items():
        assert failure is not None, name
        assert "NotImplementedError: Exercise" in failure.get("message"), name
    # One exercise blanked: its tests fail, the others pass, and -k selects them by its name.
    subprocess.run([sys.executable, script, "--out", str(one), "--functions",
                    "pause.pause_targets"], check=True, capture_output=True, env=env)
    results, log = grade(one, env, "-k", "pause_targets or finetune_example")
    failed = {name.split("[")[0] for name, failure in results.items() if failure is not None}
    assert failed == {"test_pause_targets_by_hand", "test_pause_targets_ignores_exactly_the_pauses"}
    assert any(name.startswith("test_finetune_example") for name in results), log


def test_student_version_refusals(tmp_path, capsys):
    import student_version
    with pytest.raises(SystemExit, match="unknown function 'pause.think'"):
        student_version.main(["--out", str(tmp_path / "a"), "--functions", "pause.think"])
    with pytest.raises(SystemExit, match="unknown function 'nomodule.f'"):
        student_version.main(["--out", str(tmp_path / "a"), "--functions", "nomodule.f"])
    with pytest.raises(SystemExit, match="--hide: unknown function 'tests.test_pause.twin'"):
        student_version.main(["--out", str(tmp_path / "a"), "--hide", "tests.test_pause.twin"])
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=f"--out {tmp_path / 'b'} exists and is not an empty"):
        student_version.main(["--out", str(tmp_path / "b")])
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folder left behind
