"""The graders of the course's exercises (docs/teaching.md): `python -m pytest tests -m exercises`.

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

import pause
from model import GPT, GPTConfig
import student_version
from student_version import is_blanked

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


def assert_refused(kind, what, fn, *args, **options):
    """fn(*args, **options) must raise `kind` (the kind of error its docstring names)."""
    try:
        fn(*args, **options)
    except kind:
        return
    except NotImplementedError:
        raise
    except Exception as e:
        pytest.fail(f"{what}: raised {type(e).__name__}; it must be refused with {kind.__name__}")
    pytest.fail(f"{what} was accepted; it must be refused with {kind.__name__}")


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

def assert_rows_draw_their_own(is_pause, what):
    patterns = {tuple(r.tolist()) for r in is_pause}
    assert len(patterns) > 1, \
        f"{what}: every row got the same pause slots; each row must draw its own"


def keeps_shape_dtype_and_real_tokens(insert_pauses):
    for shape, dtype, M in [((4, 50), torch.long, 5), ((3, 7), torch.int32, 20),
                            ((2, 1), torch.long, 1)]:
        tokens = torch.randint(0, 500, shape, generator=gen(1)).to(dtype)
        before = tokens.clone()
        out = insert_pauses(tokens, M, P, gen(0))
        assert out.shape == tokens.shape, f"shape {tuple(out.shape)}, the input's is {shape}"
        assert out.dtype == tokens.dtype, f"dtype {out.dtype}, the input's is {dtype}"
        assert torch.equal(tokens, before), "the input tokens were changed"
        for r_in, r_out in zip(tokens, out):
            real = r_out[r_out != P]
            assert torch.equal(real, r_in[:len(real)]), \
                "a row's non-pause tokens are not the row's first tokens in order"


def one_dimensional_input(insert_pauses):
    tokens = torch.randint(0, 500, (10,), generator=gen(2))
    outs = torch.stack([insert_pauses(tokens, 5, P, gen(seed)) for seed in range(1000)])
    assert outs.shape == (1000, 10), "a 1-D input of N tokens gives a 1-D output of N"
    assert outs.dtype == tokens.dtype, "a 1-D input keeps its dtype"
    for out in outs:
        real = out[out != P]
        assert torch.equal(real, tokens[:len(real)]), \
            "1-D: the non-pause tokens are not the first tokens in order"
    mean, se = hypergeometric_mean_se(10, 5, 1000)
    assert_near((outs == P).sum(1).double().mean().item(), mean, se,
                "1-D input, mean number of pauses kept after the trim")


def surviving_pauses_mean(insert_pauses):
    for N, M, B in [(32, 8, 4000), (6, 20, 4000)]:
        out = insert_pauses(torch.zeros(B, N, dtype=torch.long), M, P, gen(N))
        assert_rows_draw_their_own(out == P, f"N={N}, M={M}")
        mean, se = hypergeometric_mean_se(N, M, B)
        assert_near((out == P).sum(1).double().mean().item(), mean, se,
                    f"mean number of pauses kept after the trim (N={N}, M={M})")


def each_position_pause_probability(insert_pauses):
    for N, M in [(32, 8), (6, 20)]:
        out = insert_pauses(torch.zeros(4000, N, dtype=torch.long), M, P, gen(N + 1))
        assert_rows_draw_their_own(out == P, f"N={N}, M={M}")
        assert_pause_positions(out == P, M, f"how often a position is a pause (N={N}, M={M})")


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
                    f"frequency of the pause pattern {code:05b} (1 = pause) with N=5, M=3")


def same_seed_same_output_rows_differ(insert_pauses):
    tokens = torch.randint(0, 500, (16, 40), generator=gen(3))
    a, b = insert_pauses(tokens, 8, P, gen(3)), insert_pauses(tokens, 8, P, gen(3))
    assert torch.equal(a, b), "the same generator seed gave different pauses"
    assert not torch.equal(a, insert_pauses(tokens, 8, P, gen(4))), \
        "another generator seed gave the same pauses: the generator is not used"
    assert_rows_draw_their_own(a == P, "16 rows of 40")
    torch.manual_seed(0)
    c = insert_pauses(tokens, 8, P)  # without a generator: torch's global one
    torch.manual_seed(0)
    assert torch.equal(c, insert_pauses(tokens, 8, P)), \
        "without a generator, torch.manual_seed does not fix the pauses"


def zero_pauses_and_bad_input(insert_pauses):
    tokens = torch.randint(0, 500, (3, 9), generator=gen(6))
    out = insert_pauses(tokens, 0, P, gen(0))
    assert torch.equal(out, tokens) and out.dtype == tokens.dtype, "M = 0 must return the tokens"
    assert_refused(AssertionError, "a negative M", insert_pauses, tokens, -1, P)


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

def targets_by_hand(pause_targets):
    y = torch.tensor([[4, P, 5, P], [P, P, 1, 2]])
    got = pause_targets(y, P)
    assert torch.is_tensor(got), "pause_targets returns a tensor"
    assert got.tolist() == [[4, IGNORE, 5, IGNORE], [IGNORE, IGNORE, 1, 2]], \
        f"pause targets must become IGNORE (-1), the others stay: got {got.tolist()}"
    # A pause-pretraining row: the position whose input is a pause still predicts the next real
    # token; nothing predicts a pause.
    window = torch.tensor([10, 11, P, 12, P, P, 13])
    y = pause_targets(window[1:], P)
    assert y.tolist() == [11, -1, 12, -1, -1, 13], \
        "a position whose input is a pause keeps its target; only pause targets are ignored"


def targets_ignore_exactly_the_pauses(pause_targets):
    for shape in [(50,), (4, 30)]:
        targets = torch.randint(0, 10, shape, generator=gen(7))  # the pause id 7 is among them
        before = targets.clone()
        out = pause_targets(targets, 7)
        assert torch.equal(targets, before), "the input targets were changed"
        assert out.shape == targets.shape, f"shape {tuple(out.shape)}, the input's is {shape}"
        assert out.dtype == targets.dtype, f"dtype {out.dtype}, the input's is {targets.dtype}"
        assert torch.equal(out == IGNORE, targets == 7), \
            "IGNORE must appear exactly where the target is the pause id"
        assert torch.equal(out[targets != 7], targets[targets != 7]), \
            "a target that is not a pause was changed"


PAUSE_TARGETS_CHECKS = [targets_by_hand, targets_ignore_exactly_the_pauses]


@pytest.mark.exercises
@pytest.mark.parametrize("check", PAUSE_TARGETS_CHECKS, ids=lambda c: c.__name__)
def test_pause_targets(check):
    check(pause.pause_targets)


# -----------------------------------------------------------------------------------------------
# Exercise: pause.pause_pretrain_batch, the pause step of the pretraining loader (paper Sec. 3.1)

def batch_rows_and_targets(pause_pretrain_batch):
    windows = torch.randint(0, 500, (6, 41), generator=gen(8))
    before = windows.clone()
    x, y = pause_pretrain_batch(windows, 8, P, gen(0))
    assert x.shape == y.shape == (6, 40), f"x {tuple(x.shape)}, y {tuple(y.shape)}: both (B, T)"
    assert x.dtype == y.dtype == torch.long, "x and y are long tensors"
    assert torch.equal(windows, before), "the windows were changed"
    assert not (y == P).any(), "a target is the pause id: pause targets must be IGNORE"
    for w, xr, yr in zip(windows, x, y):
        real = xr[xr != P]
        assert torch.equal(real, w[:len(real)]), \
            "x's non-pause tokens are not the window's first tokens in order"
        # Each target is the next token of the pause-injected window, IGNORE where that is a pause.
        assert torch.equal(yr[:-1], torch.where(xr[1:] == P, IGNORE, xr[1:])), \
            "y is not x shifted by one (the pause-injected window's next token, IGNORE at pauses)"
        assert yr[-1] in (IGNORE, w[len(real)]), \
            "the last target is neither IGNORE nor the window's next real token"


def no_pauses_is_a_plain_shift(pause_pretrain_batch):
    windows = torch.randint(0, 500, (3, 17), generator=gen(9))
    x, y = pause_pretrain_batch(windows, 0, P)
    assert torch.equal(x, windows[:, :-1]), "M_pt = 0: x must be windows[:, :-1]"
    assert torch.equal(y, windows[:, 1:]), "M_pt = 0: y must be windows[:, 1:]"


def batch_pause_statistics(pause_pretrain_batch):
    # The whole window of T + 1 gets the pauses: x shows its first T slots, and the last slot is a
    # pause exactly when the last target is ignored.
    B, T, M = 4000, 32, 8
    x, y = pause_pretrain_batch(torch.zeros(B, T + 1, dtype=torch.long), M, P, gen(10))
    is_pause = torch.cat([x == P, y[:, -1:] == IGNORE], 1)
    assert_rows_draw_their_own(is_pause, "the windows")
    mean, se = hypergeometric_mean_se(T + 1, M, B)
    assert_near(is_pause.sum(1).double().mean().item(), mean, se,
                "mean number of pauses kept in a window of T + 1 after the trim")
    assert_pause_positions(is_pause, M, "how often a slot of the window is a pause")


def batch_same_seed_same_output_rows_differ(pause_pretrain_batch):
    windows = torch.randint(0, 500, (16, 41), generator=gen(11))
    a, b = pause_pretrain_batch(windows, 8, P, gen(1)), pause_pretrain_batch(windows, 8, P, gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), \
        "the same generator seed gave different batches"
    assert not torch.equal(a[0], pause_pretrain_batch(windows, 8, P, gen(2))[0]), \
        "another generator seed gave the same pauses: the generator is not used"
    assert_rows_draw_their_own(a[0] == P, "16 windows")


PRETRAIN_BATCH_CHECKS = [batch_rows_and_targets, no_pauses_is_a_plain_shift,
                         batch_pause_statistics, batch_same_seed_same_output_rows_differ]


@pytest.mark.exercises
@pytest.mark.parametrize("check", PRETRAIN_BATCH_CHECKS, ids=lambda c: c.__name__)
def test_pause_pretrain_batch(check):
    check(pause.pause_pretrain_batch)


# -----------------------------------------------------------------------------------------------
# Exercise: pause.finetune_example (paper Sec. 3.2)

def rows_by_hand(finetune_example):
    for args, kw, want_x, want_y in [
            (([5, 6, 7], [8, 9], 3), {}, [5, 6, 7, P, P, P, 8], [-1, -1, -1, -1, -1, 8, 9]),
            ((torch.tensor([5, 6, 7]), torch.tensor([8, 9]), 0), {}, [5, 6, 7, 8], [-1, -1, 8, 9]),
            (([5, 6, 7], [8], 2), {"where": "prepend"}, [P, P, 5, 6, 7], [-1, -1, -1, -1, 8])]:
        x, y = finetune_example(*args, P, **kw)
        what = f"prefix [5, 6, 7], M_ft {args[2]}, {kw.get('where', 'append')}"
        assert torch.is_tensor(x) and torch.is_tensor(y), f"{what}: x and y must be tensors"
        assert x.dtype == y.dtype == torch.long, f"{what}: x and y must be long tensors"
        assert x.tolist() == want_x, f"{what}: x is {x.tolist()}, expected {want_x}"
        assert y.tolist() == want_y, f"{what}: y is {y.tolist()}, expected {want_y}"


def loss_only_on_the_answer(finetune_example):
    g = gen(12)
    for where in ["append", "prepend"]:
        for _ in range(20):
            n, t, m = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
            m -= 1  # 0..7 pauses
            prefix = torch.randint(0, 500, (n,), generator=g).tolist()
            target = torch.randint(0, 500, (t,), generator=g).tolist()
            x, y = finetune_example(prefix, target, m, P, where=where)
            prompt = prefix + [P] * m if where == "append" else [P] * m + prefix
            assert x.tolist() == prompt + target[:-1], \
                f"{where}, M_ft {m}: x must be the prompt with its pauses, then the answer " \
                "without its last token"
            # The last prompt position predicts the first answer token; nothing before it has a
            # loss.
            assert y.tolist() == [IGNORE] * (n + m - 1) + target, \
                f"{where}, M_ft {m}: y must be IGNORE before the last prompt position, then the " \
                "whole answer"


def refusals(finetune_example):
    x, _ = finetune_example([1] * 4, [2, 3], 3, P, block_size=8)
    assert x.numel() == 8, "a row of exactly block_size positions must be accepted"
    for prefix, target, m, options, kind, what in [
            ([1] * 5, [2, 3], 3, {"block_size": 8}, AssertionError, "9 positions, block_size 8"),
            ([1], [2], -3, {}, AssertionError, "a negative M_ft"),
            ([1], [2], 1, {"where": "middle"}, AssertionError, "where='middle'"),
            ([1, 2], [], 2, {}, ValueError, "an empty answer"),
            ([], [2], 0, {}, ValueError, "an empty prefix and no pauses")]:
        assert_refused(kind, what, finetune_example, prefix, target, m, P, **options)


FINETUNE_EXAMPLE_CHECKS = [rows_by_hand, loss_only_on_the_answer, refusals]


@pytest.mark.exercises
@pytest.mark.parametrize("check", FINETUNE_EXAMPLE_CHECKS, ids=lambda c: c.__name__)
def test_finetune_example(check):
    check(pause.finetune_example)


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


def sampling_gpt(seed):
    """A random GPT whose next-token logits have a standard deviation of about 1.5: a spread-out
    distribution, on which temperature and top-k change the frequencies visibly."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=64, vocab_size=70, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        std = model(torch.tensor([prompts_of([6], seed)[0]]))[0][0, -1, :70].std()
        model.ln_f.weight *= 1.5 / std  # the logits are linear in the final LayerNorm's gain
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


def next_token_probs(model, ids, temperature, top_k, banned):
    """softmax(logits / temperature) of the token after ids over the allowed ids (not banned, not
    padding); with top_k, over the top_k allowed ids of the largest logits only."""
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)]))[0][0, -1].double()
    logits[model.config.vocab_size:] = float("-inf")
    logits[list(banned)] = float("-inf")
    logits = logits / temperature
    if top_k is not None:
        logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
    return torch.softmax(logits, 0)


def assert_frequencies(drawn, probs, what):
    """The empirical frequency of every id against its probability, within 5 standard errors; an
    id of probability 0 must never be drawn."""
    B = drawn.numel()
    freq = torch.bincount(drawn, minlength=probs.numel()).double() / B
    pairs = list(enumerate(zip(freq.tolist(), probs.tolist())))
    for i, (f, p) in pairs:
        assert p > 0 or f == 0, f"{what}: id {i} was drawn {round(f * B)} times but has " \
                                "probability 0 (banned, padding, or outside the top-k)"
    for i, (f, p) in pairs:
        if p > 0:
            assert_near(f, p, math.sqrt(p * (1 - p) / B),
                        f"{what}: frequency of id {i} against softmax(logits / temperature)")


def prompts_of(lengths, seed):
    g = gen(seed)
    return [torch.randint(0, 60, (n,), generator=g).tolist() for n in lengths]


# Temperature and top-k settings of the sampling graders: the banned id is the most likely one,
# so that top-k must be taken among the allowed ids.
SAMPLING = [(1.0, None), (0.5, None), (2.0, None), (1.5, 5)]


# -----------------------------------------------------------------------------------------------
# Exercise: model.GPT.generate, decoding with a KV cache. Each check takes generate as a function
# of (model, idx, max_new_tokens, **options), as GPT.generate is called unbound.

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


def assert_generated(out, width, rows, n, stop_ids, what):
    assert torch.is_tensor(out) and out.dim() == 2, f"{what}: generate returns a (B, T + n) tensor"
    new = out[:, width:].tolist()
    length = len(new[0])
    assert 1 <= length <= n, f"{what}: {length} new tokens, asked for up to {n}"
    for b, (got, want) in enumerate(zip(new, rows)):
        assert got == want[:length], \
            f"{what}: row {b}'s new tokens {got} differ from greedy decoding's {want[:length]}"
        assert length == n or got[-1] in stop_ids, \
            f"{what}: stopped after {length} tokens before every row produced a stop id"


def equals_full_rerun(generate):
    for seed in range(3):
        model = tiny_gpt(seed)
        prompts = prompts_of([9, 9], seed)
        for use_cache in (True, False):
            what = f"greedy, use_cache={use_cache}"
            out = generate(model, torch.tensor(prompts), 30, temperature=0.0, banned_ids={3},
                           use_cache=use_cache)
            assert tuple(out.shape) == (2, 39), \
                f"{what}: shape {tuple(out.shape)}; generate returns the prompt + 30 new tokens"
            assert torch.equal(out[:, :9], torch.tensor(prompts)), \
                f"{what}: the first columns must be the prompt"
            want = [greedy_rerun(model, p, 30, {3}) for p in prompts]
            assert out[:, 9:].tolist() == want, \
                f"{what}: the new tokens differ from the argmax of a full re-run at every step"
            # top_k=1 keeps only the most likely token: sampling becomes greedy decoding
            top1 = generate(model, torch.tensor(prompts), 30, temperature=1.0, top_k=1,
                            banned_ids={3}, use_cache=use_cache)
            assert torch.equal(top1, out), f"{what}: top_k=1 sampling must equal greedy decoding"


def decodes_with_the_kv_cache(generate):
    # Every forward pass embeds the positions it processes: the token embedding sees them all.
    model = tiny_gpt(5)
    B, T, n = 3, 9, 20
    calls = []
    hook = model.wte.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    try:
        out = generate(model, torch.tensor(prompts_of([T] * B, 5)), n, temperature=0.0)
    finally:
        hook.remove()
    made = out.size(1) - T
    assert made == n, f"{made} new tokens, asked for {n} (no stop ids)"
    assert calls, "the model was never called"
    for i, shape in enumerate(calls):
        assert shape[0] == B, f"forward call {i} got {shape[0]} rows; the batch has {B}"
    for i, shape in enumerate(calls[1:], 1):
        assert shape[1] == 1, \
            f"forward call {i} (after the prompt) got {shape[1]} positions per row: with the KV " \
            "cache each call gets only the one new token of each row"
    total = sum(shape[1] for shape in calls)
    assert total <= T + n, \
        f"the model processed {total} positions for a prompt of {T} and {n} new tokens; with " \
        f"the KV cache it processes each position once (at most {T + n}): linear, not quadratic"


def samples_by_temperature_and_top_k(generate):
    B = 8000
    model = sampling_gpt(6)
    prompt = prompts_of([6], 6)[0]
    banned = {int(next_token_probs(model, prompt, 1.0, None, ()).argmax())}
    idx = torch.tensor([prompt] * B)
    for temperature, top_k in SAMPLING:
        what = f"temperature {temperature}, top_k {top_k}, the most likely id banned"
        torch.manual_seed(0)
        out = generate(model, idx, 1, temperature=temperature, top_k=top_k, banned_ids=banned)
        probs = next_token_probs(model, prompt, temperature, top_k, banned)
        assert_frequencies(out[:, -1], probs, what)
    torch.manual_seed(1)
    a = generate(model, idx[:50], 5, temperature=1.0)
    torch.manual_seed(1)
    assert torch.equal(a, generate(model, idx[:50], 5, temperature=1.0)), \
        "sampling must follow torch's global generator: torch.manual_seed fixes the samples"


def never_banned_or_padding_ids(generate):
    model = tiny_gpt(0, boost=(5,))  # vocabulary 70, padded to 128: ids 70..127 are padding
    idx = torch.tensor(prompts_of([5] * 4, 1))
    # At temperature 100 sampling is nearly uniform: padding would be almost half the output.
    for temperature, top_k in [(0.0, None), (1.0, None), (100.0, None), (2.0, 5)]:
        new = generate(model, idx, 40, temperature=temperature, top_k=top_k, banned_ids={5})[:, 5:]
        what = f"temperature {temperature}, top_k {top_k}"
        assert (new < 70).all(), f"{what}: a padding id (>= vocab_size 70) was produced"
        assert not (new == 5).any(), f"{what}: the banned id 5 was produced"
    assert (generate(model, idx, 3, temperature=0.0)[:, 5:] == 5).any(), "the boost did not work"


def stop_ids_end_rows(generate):
    model = tiny_gpt(1)
    prompts = prompts_of([6, 6, 6], 2)
    free = [greedy_rerun(model, p, 20) for p in prompts]
    for stop_ids in [{free[0][3]}, {free[0][3], free[1][10]}, {free[2][19]}]:
        out = generate(model, torch.tensor(prompts), 20, temperature=0.0, stop_ids=stop_ids)
        assert_generated(out, 6, expected_rows(model, prompts, 20, (), stop_ids), 20, stop_ids,
                         f"stop ids {sorted(stop_ids)} (a row that stopped repeats its stop id)")


def left_padding_equals_batch_of_one(generate):
    model = tiny_gpt(2)
    prompts = prompts_of([5, 9, 2, 7], 3)
    width = max(map(len, prompts))
    pads = prompts_of([width - len(p) for p in prompts], 4)  # any ids: nothing may attend to them
    idx = torch.tensor([pad + p for pad, p in zip(pads, prompts)])
    pad_lens = [width - len(p) for p in prompts]
    free = [greedy_rerun(model, p, 15, {3}) for p in prompts]
    for stop_ids in [set(), {free[1][4], free[3][8]}]:
        out = generate(model, idx, 15, temperature=0.0, banned_ids={3}, stop_ids=stop_ids,
                       pad_lens=pad_lens)
        assert torch.equal(out[:, :width], idx), "with pad_lens: the first columns must be idx"
        assert_generated(out, width, expected_rows(model, prompts, 15, {3}, stop_ids), 15,
                         stop_ids, f"pad_lens {pad_lens}: each row as decoded alone")


GENERATE_CHECKS = [equals_full_rerun, decodes_with_the_kv_cache, samples_by_temperature_and_top_k,
                   never_banned_or_padding_ids, stop_ids_end_rows, left_padding_equals_batch_of_one]


@pytest.mark.exercises
@pytest.mark.parametrize("check", GENERATE_CHECKS, ids=lambda c: c.__name__)
def test_gpt_generate(check):
    check(GPT.generate)


# -----------------------------------------------------------------------------------------------
# Exercise: pause.pause_generate, pause-inference (paper Sec. 3.3)

PAUSE = 66


def with_pauses(prompt, m, where):
    return list(prompt) + [PAUSE] * m if where == "append" else [PAUSE] * m + list(prompt)


def one_prompt_equals_the_loop(pause_generate):
    for where in ["append", "prepend"]:
        model = tiny_gpt(3, boost=(PAUSE,))  # a likely output, were it not banned
        cases = list(zip([0, 4, 10], prompts_of([3, 6, 1], 5)))
        assert any(PAUSE in greedy_rerun(model, with_pauses(p, m, where), 12) for m, p in cases), \
            "the test's model does not make the pause likely (a fault of the test, not of yours)"
        for m, prompt in cases:
            free = greedy_rerun(model, with_pauses(prompt, m, where), 12, {PAUSE})
            for stop_ids, banned in [((), ()), ({free[5]}, ()), ((), {free[0]})]:
                want = greedy_rerun(model, with_pauses(prompt, m, where), 12, {PAUSE, *banned},
                                    stop_ids)
                what = f"M_inf {m}, {where}, stop ids {set(stop_ids)}, banned {set(banned)}"
                for given in (prompt, torch.tensor(prompt)):
                    got = pause_generate(model, [given], m, PAUSE, 12, where=where,
                                         stop_ids=stop_ids, banned_ids=banned)
                    assert isinstance(got, list) and len(got) == 1, \
                        f"{what}: one prompt in a list gives a list of one answer, got {got!r}"
                    assert got[0] == want, \
                        f"{what}: new tokens {got[0]}, greedy decoding after prompt + pauses " \
                        f"with the pause banned, cut before a stop id, gives {want}"
                    assert all(type(t) is int for t in got[0]), "the new ids must be Python ints"


def batch_equals_one_by_one(pause_generate):
    for where in ["append", "prepend"]:
        model = tiny_gpt(4, boost=(PAUSE,))
        prompts = prompts_of([4, 11, 1, 7], 6)
        free = [greedy_rerun(model, with_pauses(p, 5, where), 12, {PAUSE}) for p in prompts]
        stop_ids = {free[0][2], free[2][7]}
        want = [greedy_rerun(model, with_pauses(p, 5, where), 12, {PAUSE}, stop_ids)
                for p in prompts]
        for given in (prompts, [torch.tensor(p) for p in prompts]):
            got = pause_generate(model, given, 5, PAUSE, 12, where=where, stop_ids=stop_ids)
            assert got == want, \
                f"{where}: a batch of prompts of lengths 4, 11, 1, 7 must give each prompt's " \
                "own answer"


def samples_after_the_pauses(pause_generate):
    B, m = 8000, 3
    model = sampling_gpt(7)
    prompt = prompts_of([5], 7)[0]
    for temperature, top_k in SAMPLING[2:]:
        torch.manual_seed(0)
        got = pause_generate(model, [prompt] * B, m, PAUSE, 1, temperature=temperature,
                             top_k=top_k)
        drawn = torch.tensor([new[0] for new in got])
        probs = next_token_probs(model, prompt + [PAUSE] * m, temperature, top_k, {PAUSE})
        assert_frequencies(drawn, probs, f"M_inf {m}, temperature {temperature}, top_k {top_k}")


PAUSE_GENERATE_CHECKS = [one_prompt_equals_the_loop, batch_equals_one_by_one,
                         samples_after_the_pauses]


@pytest.mark.exercises
@pytest.mark.parametrize("check", PAUSE_GENERATE_CHECKS, ids=lambda c: c.__name__)
def test_pause_generate(check):
    check(pause.pause_generate)


# -----------------------------------------------------------------------------------------------
# Checks of the graders themselves (not exercises): correct implementations written differently
# pass them, wrong ones fail them, and the student version fails them with NotImplementedError.
# The wrong implementations are built around the repository's own functions (in the student
# version, around the student's), so that they give nothing away and run there too.

def insert_pauses_randperm(tokens, num_pauses, pause_id, generator=None):
    """Correct, written differently: per row, the first M entries of a random permutation of the
    N + M slots are the pause slots."""
    assert num_pauses >= 0
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
    assert num_pauses >= 0
    if num_pauses == 0:
        return tokens.clone()
    rows = tokens.reshape(-1, tokens.shape[-1])
    (B, N), S = rows.shape, rows.size(1) + num_pauses
    slots = torch.multinomial(torch.ones(B, S), num_pauses, generator=generator)
    is_pause = torch.zeros(B, S, dtype=torch.bool).scatter_(1, slots, True)
    full = torch.full((B, S), pause_id, dtype=rows.dtype)
    full[~is_pause] = rows.reshape(-1)  # each row has exactly N free slots
    return full[:, :N].reshape(tokens.shape)


ALTERNATIVES_HIDDEN = is_blanked(insert_pauses_randperm)


@pytest.mark.skipif(ALTERNATIVES_HIDDEN, reason="the student version: the correct alternatives "
                    "are solutions, hidden there")
@pytest.mark.parametrize("alternative", [insert_pauses_randperm, insert_pauses_multinomial],
                         ids=lambda f: f.__name__)
def test_graders_pass_a_correct_insert_pauses_written_differently(alternative):
    for check in INSERT_PAUSES_CHECKS:
        check(alternative)


# Wrong insert_pauses, each with the check that must catch it.

def at_the_end(tokens, m, pause_id, generator=None):
    """The right number of pauses, all at the end of the row."""
    counts = (pause.insert_pauses(tokens, m, pause_id, generator) == pause_id).sum(-1)
    out, N = tokens.clone(), tokens.shape[-1]
    for row, k in zip(out.view(-1, N), counts.view(-1).tolist()):
        row[N - k:] = pause_id
    return out


def overwrite(tokens, m, pause_id, generator=None):
    """Pauses written over the tokens instead of shifting them right."""
    mask = pause.insert_pauses(tokens, m, pause_id, generator) == pause_id
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
    return pause.insert_pauses(torch.cat([tokens, tokens[..., :m]], -1), m, pause_id, generator)


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
    return pause.insert_pauses(tokens, m, pause_id)


def same_slots_every_row(tokens, m, pause_id, generator=None):
    """One draw of pause slots shared by every row."""
    rows = tokens.reshape(-1, tokens.shape[-1])
    N = rows.size(1)
    first = pause.insert_pauses(torch.arange(N), m, N, generator)  # N marks a pause slot
    out = rows[:, first.clamp(max=N - 1)].masked_fill(first == N, pause_id)
    return out.view(tokens.shape)


def no_check(tokens, m, pause_id, generator=None):
    """Negative M accepted."""
    return pause.insert_pauses(tokens, max(m, 0), pause_id, generator)


WRONG_INSERT_PAUSES = [(at_the_end, each_position_pause_probability),
                       (overwrite, keeps_shape_dtype_and_real_tokens),
                       (bernoulli, pause_patterns_have_their_probability),
                       (no_trim, keeps_shape_dtype_and_real_tokens),
                       (all_pauses_kept, surviving_pauses_mean),
                       (global_generator, same_seed_same_output_rows_differ),
                       (same_slots_every_row, surviving_pauses_mean),
                       (no_check, zero_pauses_and_bad_input)]


# Wrong pause_targets.

def targets_in_place(targets, pause_id):
    """The input's pause targets overwritten in place."""
    return targets.copy_(pause.pause_targets(targets, pause_id))


def zero_not_ignore(targets, pause_id):
    """Pause targets set to 0 instead of IGNORE."""
    out = pause.pause_targets(targets, pause_id)
    return out.masked_fill(out == IGNORE, 0)


def targets_unchanged(targets, pause_id):
    """Nothing ignored."""
    return targets.clone()


def pause_inputs_ignored_too(targets, pause_id):
    """Also no loss at the position after a pause target, i.e. where the input is a pause."""
    out = pause.pause_targets(targets, pause_id)
    out[..., 1:][targets[..., :-1] == pause_id] = IGNORE
    return out


WRONG_PAUSE_TARGETS = [(targets_in_place, targets_ignore_exactly_the_pauses),
                       (zero_not_ignore, targets_by_hand),
                       (targets_unchanged, targets_by_hand),
                       (pause_inputs_ignored_too, targets_by_hand)]


# Wrong pause_pretrain_batch.

def targets_without_pauses(windows, m, pause_id, generator=None):
    """x with pauses, the targets from the window without them."""
    x, _ = pause.pause_pretrain_batch(windows, m, pause_id, generator)
    return x, windows[:, 1:]


def pauses_in_x_only(windows, m, pause_id, generator=None):
    """Pauses in x, the targets a plain shift."""
    return pause.insert_pauses(windows[:, :-1], m, pause_id, generator), windows[:, 1:]


def one_pause_too_few(windows, m, pause_id, generator=None):
    """M_pt - 1 pauses."""
    return pause.pause_pretrain_batch(windows, max(m - 1, 0), pause_id, generator)


def x_and_y_drawn_apart(windows, m, pause_id, generator=None):
    """Pauses inserted after the shift, into x and y separately."""
    x = pause.insert_pauses(windows[:, :-1], m, pause_id, generator)
    y = pause.insert_pauses(windows[:, 1:], m, pause_id, generator)
    return x, pause.pause_targets(y, pause_id)


def pause_targets_kept(windows, m, pause_id, generator=None):
    """S_ignore forgotten: pause targets carry a loss."""
    w = pause.insert_pauses(windows, m, pause_id, generator)
    return w[:, :-1], w[:, 1:]


def batch_generator_ignored(windows, m, pause_id, generator=None):
    """The generator passed in is ignored."""
    return pause.pause_pretrain_batch(windows, m, pause_id)


WRONG_PRETRAIN_BATCH = [(targets_without_pauses, batch_rows_and_targets),
                        (pauses_in_x_only, batch_rows_and_targets),
                        (one_pause_too_few, batch_pause_statistics),
                        (x_and_y_drawn_apart, batch_rows_and_targets),
                        (pause_targets_kept, batch_rows_and_targets),
                        (batch_generator_ignored, batch_same_seed_same_output_rows_differ)]


# Wrong finetune_example.

def loss_on_the_prompt(prefix, target, m, pause_id, where="append", block_size=None):
    """Every position predicts its next token, the prompt's included."""
    x, _ = pause.finetune_example(prefix, target, m, pause_id, where, block_size)
    return x, torch.cat([x[1:], torch.as_tensor(target[-1:], dtype=torch.long)])


def answer_one_late(prefix, target, m, pause_id, where="append", block_size=None):
    """The first answer token predicted one position late (by itself), the last one dropped."""
    x, y = pause.finetune_example(prefix, target, m, pause_id, where, block_size)
    return x, torch.cat([torch.tensor([IGNORE]), y[:-1]])


def where_ignored(prefix, target, m, pause_id, where="append", block_size=None):
    """Pauses always after the prompt."""
    return pause.finetune_example(prefix, target, m, pause_id, "append", block_size)


def lists_not_tensors(prefix, target, m, pause_id, where="append", block_size=None):
    """x and y returned as lists."""
    x, y = pause.finetune_example(prefix, target, m, pause_id, where, block_size)
    return x.tolist(), y.tolist()


def empty_answer_accepted(prefix, target, m, pause_id, where="append", block_size=None):
    """No refusal of an empty answer: an empty row instead."""
    if len(target) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return pause.finetune_example(prefix, target, m, pause_id, where, block_size)


def whole_answer_in_x(prefix, target, m, pause_id, where="append", block_size=None):
    """x holds the last answer token too (a position that predicts nothing)."""
    x, y = pause.finetune_example(prefix, target, m, pause_id, where, block_size)
    last = torch.as_tensor(target[-1:], dtype=torch.long)
    return torch.cat([x, last]), torch.cat([y, torch.tensor([IGNORE])])


WRONG_FINETUNE_EXAMPLE = [(loss_on_the_prompt, rows_by_hand), (answer_one_late, rows_by_hand),
                          (where_ignored, rows_by_hand), (lists_not_tensors, rows_by_hand),
                          (empty_answer_accepted, refusals), (whole_answer_in_x, rows_by_hand)]


# Wrong GPT.generate.

def without_kv_cache(model, idx, n, **options):
    """The whole sequence re-run for every new token: the same tokens, quadratic work."""
    return GPT.generate(model, idx, n, **{**options, "use_cache": False})


def temperature_ignored(model, idx, n, temperature=1.0, **options):
    """Sampling from softmax(logits) whatever the temperature (0 still greedy)."""
    return GPT.generate(model, idx, n, temperature=1.0 if temperature else 0.0, **options)


def temperature_multiplied(model, idx, n, temperature=1.0, **options):
    """softmax(logits * temperature) instead of softmax(logits / temperature)."""
    return GPT.generate(model, idx, n, temperature=1 / temperature if temperature else 0.0,
                        **options)


def always_greedy(model, idx, n, temperature=1.0, **options):
    """The argmax, whatever the temperature."""
    return GPT.generate(model, idx, n, temperature=0.0, **options)


def top_k_one_too_many(model, idx, n, top_k=None, **options):
    """top_k + 1 ids kept."""
    return GPT.generate(model, idx, n, top_k=top_k and top_k + 1, **options)


def top_k_one_too_few(model, idx, n, top_k=None, **options):
    """top_k - 1 ids kept."""
    return GPT.generate(model, idx, n, top_k=top_k and max(top_k - 1, 1), **options)


def banned_ids_ignored(model, idx, n, banned_ids=(), **options):
    """Only the padding ids banned."""
    return GPT.generate(model, idx, n, **options)


def rows_go_on_after_their_stop(model, idx, n, stop_ids=(), **options):
    """Stop ids ignored: every row decodes n tokens."""
    return GPT.generate(model, idx, n, **options)


def padding_attended(model, idx, n, pad_lens=None, **options):
    """pad_lens ignored: the padding is read as part of the prompt."""
    return GPT.generate(model, idx, n, **options)


def only_the_new_tokens(model, idx, n, **options):
    """The prompt left out of the result."""
    return GPT.generate(model, idx, n, **options)[:, idx.size(1):]


WRONG_GENERATE = [(without_kv_cache, decodes_with_the_kv_cache),
                  (temperature_ignored, samples_by_temperature_and_top_k),
                  (temperature_multiplied, samples_by_temperature_and_top_k),
                  (always_greedy, samples_by_temperature_and_top_k),
                  (top_k_one_too_many, samples_by_temperature_and_top_k),
                  (top_k_one_too_few, samples_by_temperature_and_top_k),
                  (banned_ids_ignored, never_banned_or_padding_ids),
                  (rows_go_on_after_their_stop, stop_ids_end_rows),
                  (padding_attended, left_padding_equals_batch_of_one),
                  (only_the_new_tokens, equals_full_rerun)]


# Wrong pause_generate.

def no_pauses_inserted(model, prompts, m, pause_id, n, **options):
    """M_inf ignored: decoding right after the prompt."""
    return pause.pause_generate(model, prompts, 0, pause_id, n, **options)


class PauseAllowed:
    """The model, but its generate lets the pause through: pause_generate without the ban."""

    def __init__(self, model, pause_id):
        self.model, self.pause_id = model, pause_id
        self.config, self.device = model.config, model.device

    def generate(self, idx, n, banned_ids=(), **options):
        return self.model.generate(idx, n, banned_ids=set(banned_ids) - {self.pause_id},
                                   **options)


def pause_not_banned(model, prompts, m, pause_id, n, **options):
    """The pause may be emitted."""
    return pause.pause_generate(PauseAllowed(model, pause_id), prompts, m, pause_id, n, **options)


def prompt_and_pauses_returned(model, prompts, m, pause_id, n, where="append", **options):
    """The prompt and its pauses returned with the new tokens."""
    news = pause.pause_generate(model, prompts, m, pause_id, n, where=where, **options)
    return [pause.append_pauses(p, m, pause_id, where).tolist() + new
            for p, new in zip(prompts, news)]


def stop_id_kept(model, prompts, m, pause_id, n, stop_ids=(), **options):
    """The answer cut after its stop id instead of before it."""
    news = pause.pause_generate(model, prompts, m, pause_id, n, **options)
    cut = [next((i for i, t in enumerate(new) if t in stop_ids), len(new) - 1) for new in news]
    return [new[:i + 1] for new, i in zip(news, cut)]


def sampling_options_dropped(model, prompts, m, pause_id, n, temperature=0.0, top_k=None,
                             **options):
    """temperature and top_k not passed on: always greedy."""
    return pause.pause_generate(model, prompts, m, pause_id, n, **options)


WRONG_PAUSE_GENERATE = [(no_pauses_inserted, one_prompt_equals_the_loop),
                        (pause_not_banned, one_prompt_equals_the_loop),
                        (prompt_and_pauses_returned, one_prompt_equals_the_loop),
                        (stop_id_kept, one_prompt_equals_the_loop),
                        (sampling_options_dropped, samples_after_the_pauses)]


WRONG = (WRONG_INSERT_PAUSES + WRONG_PAUSE_TARGETS + WRONG_PRETRAIN_BATCH + WRONG_FINETUNE_EXAMPLE
         + WRONG_GENERATE + WRONG_PAUSE_GENERATE)


@pytest.mark.parametrize("wrong, caught_by", WRONG, ids=lambda f: f.__name__)
def test_graders_fail_a_wrong_implementation(wrong, caught_by):
    with pytest.raises((AssertionError, pytest.fail.Exception)) as failed:
        caught_by(wrong)
    # The failure says what property is broken, in the student's terms.
    assert str(failed.value).strip() and not str(failed.value).startswith("assert "), \
        f"{caught_by.__name__} caught {wrong.__name__} with a bare assert: {failed.value}"


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
    failed = {name for name, failure in results.items() if failure is not None}
    assert {name.split("[")[0] for name in failed} == {"test_pause_targets"}, log
    assert len(failed) == len(PAUSE_TARGETS_CHECKS), log
    assert any(name.startswith("test_finetune_example") for name in results), log


def test_student_version_passes_once_the_exercises_are_written(tmp_path):
    # Make the student version, put the reference bodies back (the exercises' modules), and run
    # there the test files the maker changes (their hidden solutions) plus the model's tests: they
    # pass, the tests that need a hidden solution skipped with their reason. (The whole suite,
    # run by hand the same way, passes too; docs/teaching.md.)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    student = tmp_path / "student"
    subprocess.run([sys.executable, str(ROOT / "tests" / "student_version.py"), "--out",
                    str(student)], check=True, capture_output=True, env=env)
    modules = {name.split(".")[0] + ".py" for name in student_version.EXERCISES}
    for module in modules:
        assert "NotImplementedError" in (student / module).read_text(), module
        (student / module).write_text((ROOT / module).read_text())
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rs", "-p",
                          "no:cacheprovider", "tests/test_exercises.py", "tests/test_pause.py",
                          "-k", "not student_version"], cwd=student, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "hidden there" in run.stdout, run.stdout[-3000:]  # the skips say why


def test_student_version_blanks_only_what_is_graded(tmp_path):
    with pytest.raises(SystemExit) as refused:
        student_version.main(["--out", str(tmp_path / "a"),
                              "--functions", "finetune.training_rows"])
    assert "no grader" in str(refused.value) and "pause.insert_pauses" in str(refused.value)
    assert not (tmp_path / "a").exists()
    # The command each exercise prints selects its graders: -k holds when the name of a test
    # marked exercises (here, in this file) contains the key.
    graded = [name for name, f in globals().items() if name.startswith("test_")
              and any(m.name == "exercises" for m in getattr(f, "pytestmark", []))]
    for name in student_version.EXERCISES:
        k = student_version.grader_key(name)
        assert any(k in test for test in graded), f"-k {k} selects no grader of {name}"


def test_student_version_refusals(tmp_path, capsys):
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
