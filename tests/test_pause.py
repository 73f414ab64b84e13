import pytest
import torch

import pause
from pause import IGNORE, finetune_example, insert_pauses, num_pretrain_pauses, pause_targets

P = 999


def insert_pauses_loop(row, num_pauses, pause_id, keys):
    """Plain twin of insert_pauses for one sequence: the pause slots are the num_pauses slots with
    the largest keys; walk the N + M slots, emit a pause or the next real token, keep the first N."""
    slots = set(sorted(range(len(keys)), key=lambda i: keys[i], reverse=True)[:num_pauses])
    real = iter(row)
    out = [pause_id if s in slots else next(real) for s in range(len(keys))]
    return out[:len(row)]


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1), (4, 17), (2, 64), (8, 257)])
@pytest.mark.parametrize("num_pauses", [0, 1, 5, 40])
def test_insert_pauses_matches_plain_loop(shape, num_pauses):
    for seed in range(5):
        tokens = torch.randint(0, 500, shape)
        out = insert_pauses(tokens, num_pauses, P, torch.Generator().manual_seed(seed))
        assert out.shape == tokens.shape and out.dtype == tokens.dtype
        if num_pauses == 0:
            assert torch.equal(out, tokens)
            continue
        rows = tokens.view(-1, shape[-1])
        keys = torch.rand(rows.size(0), shape[-1] + num_pauses, generator=torch.Generator().manual_seed(seed))
        expect = [insert_pauses_loop(r.tolist(), num_pauses, P, k.tolist()) for r, k in zip(rows, keys)]
        assert out.view(-1, shape[-1]).tolist() == expect


def test_insert_pauses_keeps_real_tokens_in_order_and_dtype():
    tokens = torch.arange(1000, dtype=torch.int32).view(4, 250)
    out = insert_pauses(tokens, 30, P, torch.Generator().manual_seed(1))
    assert out.dtype == torch.int32
    for r_in, r_out in zip(tokens, out):
        real = r_out[r_out != P]
        assert torch.equal(real, r_in[:len(real)])


def test_insert_pauses_is_reproducible_and_rows_differ():
    tokens = torch.zeros(16, 100, dtype=torch.long)
    a = insert_pauses(tokens, 10, P, torch.Generator().manual_seed(3))
    b = insert_pauses(tokens, 10, P, torch.Generator().manual_seed(3))
    c = insert_pauses(tokens, 10, P, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) > 1


def test_insert_pauses_statistics():
    # M pauses among N + M slots, trim to N: E[surviving pauses] = N*M/(N+M), and every position
    # is a pause with probability M/(N+M) (exchangeability of the slots).
    N, M, B = 64, 16, 20000
    out = insert_pauses(torch.zeros(B, N, dtype=torch.long), M, P, torch.Generator().manual_seed(0))
    is_pause = (out == P).double()
    p = M / (N + M)
    assert abs(is_pause.sum(1).mean().item() - N * p) < 0.05
    per_pos = is_pause.mean(0)
    se = (p * (1 - p) / B) ** 0.5
    assert (per_pos - p).abs().max().item() < 5 * se


def test_num_pretrain_pauses():
    assert num_pretrain_pauses(0.1, 2048) == 205
    assert num_pretrain_pauses(0.0, 2048) == 0
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"pause_frac must be in \[0, 1\)"):
            num_pretrain_pauses(bad, 2048)


def test_pause_targets():
    y = torch.tensor([[4, P, 5, P], [P, P, 1, 2]])
    assert pause_targets(y, P).tolist() == [[4, -1, 5, -1], [-1, -1, 1, 2]]


def test_pretraining_row_by_hand():
    # A window of N+1 tokens -> x = window[:-1], y = pause_targets(window[1:]): the position whose
    # input is a pause still predicts the next real token; nothing predicts a pause.
    window = torch.tensor([10, 11, P, 12, P, P, 13])
    x, y = window[:-1], pause_targets(window[1:], P)
    assert x.tolist() == [10, 11, P, 12, P, P]
    assert y.tolist() == [11, -1, 12, -1, -1, 13]


def test_finetune_example_by_hand():
    x, y = finetune_example([5, 6, 7], [8, 9], 3, P)
    assert x.tolist() == [5, 6, 7, P, P, P, 8]
    assert y.tolist() == [-1, -1, -1, -1, -1, 8, 9]
    x, y = finetune_example([5, 6, 7], [8, 9], 0, P)  # StdFT: the last prompt token predicts
    assert x.tolist() == [5, 6, 7, 8] and y.tolist() == [-1, -1, 8, 9]
    x, y = finetune_example([5, 6, 7], [8], 2, P, where="prepend")
    assert x.tolist() == [P, P, 5, 6, 7] and y.tolist() == [-1, -1, -1, -1, 8]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="num_pauses must be an integer >= 0"):
        insert_pauses(torch.zeros(4, dtype=torch.long), -1, P)
    with pytest.raises(ValueError, match="num_pauses"):
        finetune_example([1], [2], -3, P)
    with pytest.raises(ValueError, match="target .* is empty"):
        finetune_example([1, 2], [], 2, P)
    with pytest.raises(ValueError, match="more than the context of 8"):
        finetune_example([1] * 5, [2, 3], 3, P, block_size=8)
    assert finetune_example([1] * 4, [2, 3], 3, P, block_size=8)[0].numel() == 8
    with pytest.raises(ValueError, match="pause_id .* outside the vocabulary"):
        insert_pauses(torch.zeros(4, dtype=torch.long), 1, -5)
    with pytest.raises(ValueError, match="'append' or 'prepend'"):
        finetune_example([1], [2], 1, P, where="middle")
    assert IGNORE == -1 and pause.IGNORE == -1
