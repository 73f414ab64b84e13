import json

import numpy as np
import pytest
import torch

import pause
from data import (PretrainLoader, builtin_tokens, get_tokenizer, load_shard, read_checked_meta,
                  write_shard)
from pause import pause_pretrain_batch
from tools.prepare import prepare
from tools.common import UserError


def test_bad_shards_are_refused(tmp_path):
    good = tmp_path / "train_000000.bin"
    write_shard(good, np.arange(100), vocab_size=258)
    assert load_shard(good).tolist() == list(range(100))
    write_shard(tmp_path / "strided.bin", np.arange(100, dtype=np.uint16)[::3], vocab_size=258)
    assert load_shard(tmp_path / "strided.bin").tolist() == list(range(0, 100, 3))
    raw = good.read_bytes()
    cases = {"magic": b"\0\0\0\0" + raw[4:], "version": raw[:4] + b"\x09\0\0\0" + raw[8:],
             "bytes": raw[:-10], "header": raw[:100]}
    for what, content in cases.items():
        bad = tmp_path / f"bad_{what}.bin"
        bad.write_bytes(content)
        with pytest.raises(UserError, match=f"{bad}.*(magic|version|bytes|header)"):
            load_shard(bad)


@pytest.mark.exercises
def test_pause_pretrain_batch_grades_by_properties():
    # Paper Sec. 3.1, graded by what any correct implementation does, not by its random draws.
    B, T, M, pid = 400, 31, 8, 10 ** 6
    N = T + 1
    windows = torch.arange(B * N).view(B, N)
    x0, y0 = pause_pretrain_batch(windows, 0, pid)
    assert torch.equal(x0, windows[:, :-1]) and torch.equal(y0, windows[:, 1:])
    x, y = pause_pretrain_batch(windows, M, pid, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous()
    assert not (y == pid).any()  # S_ignore: a pause target carries no loss
    # The targets are the inputs shifted by one, with IGNORE exactly where that input is a pause.
    assert torch.equal(y[:, :-1], x[:, 1:].masked_fill(x[:, 1:] == pid, pause.IGNORE))
    w = torch.cat([x, y[:, -1:].masked_fill(y[:, -1:] == pause.IGNORE, pid)], 1)
    for b in range(B):
        real = w[b][w[b] != pid]
        assert torch.equal(real, windows[b, :len(real)])  # real tokens in order, a prefix
    is_pause = (w == pid).double()
    # Each of the N window slots keeps a pause with probability M / (N + M) ...
    p = M / (N + M)
    assert ((is_pause.mean(0) - p).abs() < 5 * (p * (1 - p) / B) ** 0.5).all()
    # ... so a window holds N * M / (N + M) pauses on average.
    count = is_pause.sum(1)
    assert abs(count.mean() - N * M / (N + M)) < 5 * count.std() / B ** 0.5
    again = pause_pretrain_batch(windows, M, pid, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert len({tuple(r) for r in (x == pid).tolist()}) > B // 2  # each row draws its own places


def _prepared(tmp_path, tokenizer="byte", val_every=4):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i} " * 20}) + "\n" for i in range(12)))
    prepare([str(src)], tmp_path / "d", tokenizer, val_every=val_every, workers=1)
    return tmp_path / "d"


def test_read_checked_meta_checks_the_shards_against_meta_json(tmp_path):
    d = _prepared(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    assert read_checked_meta(d) == meta and meta["val_shards"]
    # The shards' vocabulary against the tokenizer meta.json names: refused, naming the shard,
    # by read_checked_meta and by a loader of the directory, instead of training on another's ids.
    (d / "meta.json").write_text(json.dumps(dict(meta, tokenizer="gpt2")))
    for check in (lambda: read_checked_meta(d), lambda: PretrainLoader(str(d), 2, 8)):
        with pytest.raises(UserError, match=r"train_000000.bin: .*vocabulary of 258 ids.*50258"):
            check()
    (d / "meta.json").write_text(json.dumps(meta))
    write_shard(d / "val_000000.bin", load_shard(d / "val_000000.bin"), 50258)
    with pytest.raises(UserError, match="val_000000.bin: .*50258 ids.*has 258"):
        read_checked_meta(d)
    (d / "val_000000.bin").unlink()  # listed in meta.json, gone from the disk
    with pytest.raises(UserError, match="val_000000.bin is missing"):
        read_checked_meta(d)
    write_shard(d / "val_000000.bin", [1, 2, 3], 258)
    with pytest.raises(UserError, match=r"val_000000.bin holds 3 tokens where .*json says [\d,]+"):
        read_checked_meta(d)
    write_shard(d / "val_000000.bin", [1] * meta["val_shards"][0], 258)
    write_shard(d / "train_000007.bin", [1, 2, 3], 258)
    with pytest.raises(UserError, match="train_000007.bin is not listed in .*meta.json"):
        read_checked_meta(d)
    (d / "train_000007.bin").unlink()
    read_checked_meta(d)
    for text in ('{"tokenizer": "byte", ', "[]", '{"tokenizer": "llama"}', '{"tokenizer": "byte"}',
                 "\xff\xfe", "null"):
        (d / "meta.json").write_text(text, encoding="latin-1")
        with pytest.raises(UserError, match="meta.json is not a meta.json written by prepare"):
            read_checked_meta(d)


def test_a_damaged_meta_json_is_named(tmp_path):
    d = _prepared(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    # Wrong types in each field, which once surfaced as a TypeError or as a misleading shard
    # name: each is named by the file and the field.
    damaged = {"tokenizer": [5, ["byte"], None],
               "train_shards": ["abc", [1.5], [-1], {"0": 1}, []],
               "val_shards": [5, "12", [None], True]}
    for key, values in damaged.items():
        for value in values:
            (d / "meta.json").write_text(json.dumps({**meta, key: value}))
            with pytest.raises(UserError, match=f"meta.json is not a meta.json .*its {key} is"):
                read_checked_meta(d)
    (d / "meta.json").write_text(json.dumps(meta))
    read_checked_meta(d)
    # A shard path that is a directory: named, not an IsADirectoryError.
    (d / "val_000000.bin").unlink()
    (d / "val_000000.bin").mkdir()
    with pytest.raises(UserError, match="val_000000.bin: not a file"):
        read_checked_meta(d)


def _windows(loader, n):
    # With a source of distinct values, a row's first token identifies its window.
    return [x[:, 0].tolist() for x, _ in (loader.next_batch() for _ in range(n))]


def test_ranks_read_disjoint_windows_that_one_process_reads_together():
    src = np.arange(20_000, dtype=np.uint16)
    B, T = 4, 16
    one = _windows(PretrainLoader(src, B, T, seed=3), 40)
    r0 = _windows(PretrainLoader(src, B, T, rank=0, world_size=2, seed=3), 20)
    r1 = _windows(PretrainLoader(src, B, T, rank=1, world_size=2, seed=3), 20)
    for step in range(20):
        assert not set(r0[step]) & set(r1[step])
        # = gradient accumulation over 2 micro-steps
        assert r0[step] == one[2 * step] and r1[step] == one[2 * step + 1]
    seen = [w for batch in r0 + r1 for w in batch]
    # No window twice in an epoch.
    assert len(seen) == len(set(seen)) and all(w % T == 0 for w in seen)
    x, y = PretrainLoader(src, B, T, seed=3).next_batch()
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)


def test_pause_share_and_ignored_targets():
    T, frac, pause_id = 64, 0.1, 60_000
    M, N = pause.num_pretrain_pauses(frac, T), T + 1
    src = np.arange(50_000, dtype=np.uint16)
    loader = PretrainLoader(src, 8, T, frac, pause_id, seed=0)
    xs = []
    for _ in range(50):
        x, y = loader.next_batch()
        xs.append(x)
        assert (y == pause_id).sum() == 0 and (y == pause.IGNORE).sum() > 0
        for row_x, row_y in zip(x, y):
            real = row_x[row_x != pause_id]
            # Real tokens in order; S_ignore: no loss exactly where the target is a pause.
            assert torch.equal(real, torch.arange(real[0], real[0] + len(real)))
            assert torch.equal(row_y[:-1] == pause.IGNORE, row_x[1:] == pause_id)
    share = torch.stack(xs).eq(pause_id).float().mean().item()
    assert abs(share - M / (N + M)) < 0.01
    assert loader.pause_tokens == int(torch.stack(xs).eq(pause_id).sum())
    assert loader.real_tokens + loader.pause_tokens == 50 * 8 * T


def test_loader_resumes_with_the_next_batch_across_epochs():
    src = np.arange(2_000, dtype=np.uint16)
    a = PretrainLoader(src, 4, 16, 0.1, 65_000, seed=5)
    for _ in range(25):  # 124 windows: an epoch is 31 batches
        a.next_batch()
    b = PretrainLoader(src, 4, 16, 0.1, 65_000, seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.epoch == 1
    other = PretrainLoader(np.arange(3_000, dtype=np.uint16), 4, 16, 0.1, 65_000, seed=5)
    with pytest.raises(ValueError, match="num_windows"):
        other.load_state_dict(a.state_dict())


def test_too_little_data_for_one_global_batch_says_what_to_do():
    src = np.arange(100, dtype=np.uint16)  # 3 windows of 33 tokens
    with pytest.raises(UserError, match=r"train data holds 3 windows of 33 tokens, fewer than one "
                                         r"global batch \(2 x 2 ranks\); prepare more data or"):
        PretrainLoader(src, 2, 32, world_size=2)
    with pytest.raises(UserError, match="3 windows .*; raise --builtin_docs or use a smaller"):
        PretrainLoader(src, 4, 32, more_data="raise --builtin_docs")
    assert PretrainLoader(src, 3, 32).num_windows == 3


def test_builtin_corpus():
    tok = get_tokenizer("byte")
    train, val = builtin_tokens(50, seed=0), builtin_tokens(50, seed=1)
    assert train.dtype == np.uint16 and train[0] == tok.eot_id and (train == tok.eot_id).sum() == 50
    assert np.array_equal(train, builtin_tokens(50, seed=0))
    assert not np.array_equal(train[:500], val[:500])
    assert tok.pause_id not in train
