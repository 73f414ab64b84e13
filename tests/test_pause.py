"""pause.py beyond the exercise graders (tests/test_exercises.py grades the behaviour any correct
implementation has): the reference check of this repository's own insert_pauses against its plain
loop twin, which replays the same random keys and so is a check of this implementation, not a
grade (skipped in the student version, where the twin is hidden); M_pt from pause_frac;
append_pauses; and the kind of each refusal."""
import pytest
import torch

import pause
from pause import IGNORE, append_pauses, finetune_example, insert_pauses, num_pretrain_pauses
from student_version import is_blanked

P = 999


def insert_pauses_loop(row, num_pauses, pause_id, keys):
    """Plain twin of insert_pauses for one sequence: the pause slots are the num_pauses slots with
    the largest keys; walk the N + M slots, emit a pause or the next real token, keep the first
    N."""
    slots = set(sorted(range(len(keys)), key=lambda i: keys[i], reverse=True)[:num_pauses])
    real = iter(row)
    out = [pause_id if s in slots else next(real) for s in range(len(keys))]
    return out[:len(row)]


@pytest.mark.skipif(is_blanked(insert_pauses_loop), reason="the student version: this checks the "
                    "reference's own random draws, and the loop twin is hidden there")
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1), (4, 17), (2, 64), (8, 257)])
@pytest.mark.parametrize("num_pauses", [0, 1, 5, 40])
def test_reference_insert_pauses_matches_its_plain_loop(shape, num_pauses):
    # A reference check: it replays the vectorized version's keys (B x (N + M) uniform draws from
    # the generator), so a correct implementation that draws differently would fail it.
    for seed in range(5):
        tokens = torch.randint(0, 500, shape)
        out = insert_pauses(tokens, num_pauses, P, torch.Generator().manual_seed(seed))
        assert out.shape == tokens.shape and out.dtype == tokens.dtype
        if num_pauses == 0:
            assert torch.equal(out, tokens)
            continue
        rows = tokens.view(-1, shape[-1])
        keys = torch.rand(rows.size(0), shape[-1] + num_pauses,
                          generator=torch.Generator().manual_seed(seed))
        expect = [insert_pauses_loop(r.tolist(), num_pauses, P, k.tolist())
                  for r, k in zip(rows, keys)]
        assert out.view(-1, shape[-1]).tolist() == expect


def test_num_pretrain_pauses():
    assert num_pretrain_pauses(0.1, 2048) == 205
    assert num_pretrain_pauses(0.0, 2048) == 0
    assert num_pretrain_pauses(0.5, 7) == 4  # round half to even: 3.5 -> 4


def test_append_pauses():
    assert append_pauses([5, 6], 3, P).tolist() == [5, 6, P, P, P]
    assert append_pauses(torch.tensor([5, 6]), 2, P, where="prepend").tolist() == [P, P, 5, 6]
    assert append_pauses([5, 6], 2, 13).tolist() == [5, 6, 13, 13]  # a filler such as '.'
    assert append_pauses([5, 6], 0, P).tolist() == [5, 6]
    assert append_pauses([5], 1, P).dtype == torch.long


def test_refusals_are_of_their_kind():
    # A programmer's mistake is an assert; what a user's data can reach is a ValueError. The
    # wording belongs to the checks at the door (the scripts' configs), so it is not pinned here.
    with pytest.raises(AssertionError):
        insert_pauses(torch.zeros(4, dtype=torch.long), -1, P)
    with pytest.raises(AssertionError):
        finetune_example([1], [2], -3, P)
    with pytest.raises(AssertionError):
        finetune_example([1], [2], 1, P, where="middle")
    with pytest.raises(AssertionError):
        finetune_example([1] * 5, [2, 3], 3, P, block_size=8)
    with pytest.raises(ValueError):
        finetune_example([1, 2], [], 2, P)
    with pytest.raises(ValueError):
        finetune_example([], [2], 0, P)
    assert IGNORE == -1 and pause.IGNORE == -1
