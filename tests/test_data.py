import gzip
import http.server
import json
import threading

import numpy as np
import pytest
import tiktoken
import torch

import pause
from data import PretrainLoader, builtin_tokens, get_tokenizer, load_shard, write_shard
from common import download
from prepare import iter_documents, main

DOCS = ["The first document.\nIt has two lines.", "Second: 3 + 4 = 7, and ünïcode too!", "",
        "<|endoftext|> in the text is ordinary text", "  leading spaces\n\n\nand blank lines  "]


def _write_jsonl_gz(path, docs, bad_line_after=None):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"}) + "\n")
            if i == bad_line_after:
                f.write('{"text": "this line is cut off\n')


def test_prepare_c4_format_gives_tiktoken_tokens_plus_separators(tmp_path, capsys):
    path = tmp_path / "c4-train.00000-of-01024.json.gz"
    _write_jsonl_gz(path, DOCS, bad_line_after=1)
    main(["prepare", "--input", str(path), "--out", str(tmp_path / "shards"), "--val_every", "0",
          "--workers", "2"])
    out = capsys.readouterr()
    assert f"{path}:3" in out.err + out.out and "1 bad JSON lines skipped" in out.out
    enc = tiktoken.get_encoding("gpt2")
    expected = [t for d in DOCS for t in [enc.eot_token] + enc.encode_ordinary(d)]
    tokens = load_shard(tmp_path / "shards" / "train_000000.bin")
    assert tokens.tolist() == expected
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["documents"], meta["skipped_lines"], meta["val_shards"]) == ("gpt2", 5, 1, [])
    assert f"{len(expected):,} tokens" in out.out


def test_prepare_splits_validation_and_bounds_shards(tmp_path):
    docs = [f"document number {i} " * 3 for i in range(40)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    main(["prepare", "--input", str(src), "--out", str(tmp_path / "s"), "--tokenizer", "byte",
          "--val_every", "10", "--shard_tokens", "300", "--workers", "1"])
    tok = get_tokenizer("byte")
    val_docs = [d for i, d in enumerate(docs) if i % 10 == 9]
    train_docs = [d for i, d in enumerate(docs) if i % 10 != 9]
    for split, ds in (("train", train_docs), ("val", val_docs)):
        shards = sorted((tmp_path / "s").glob(f"{split}_*.bin"))
        got = np.concatenate([load_shard(p) for p in shards]).tolist()
        assert got == [t for d in ds for t in [tok.eot_id] + tok.encode(d)]
        assert all(len(load_shard(p)) <= 300 for p in shards) and len(shards) == -(-len(got) // 300)


def test_long_txt_pieces_tokenize_like_the_whole_file(tmp_path):
    lines = [f"Line {i}: {'  ' if i % 7 == 0 else ''}some text, numbers {i * 37} and  spaces.\n" for i in range(300)]
    lines[50] = "\n"
    text = "".join(lines)
    path = tmp_path / "book.txt"
    path.write_text(text)
    pieces = list(iter_documents(path, stats=None, chunk_chars=500))
    assert len(pieces) > 10 and "".join(p for p, _ in pieces) == text
    assert [more for _, more in pieces] == [True] * (len(pieces) - 1) + [False]
    enc = tiktoken.get_encoding("gpt2")
    assert [t for p, _ in pieces for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)


def test_bad_shards_are_refused(tmp_path):
    good = tmp_path / "train_000000.bin"
    write_shard(good, np.arange(100), vocab_size=258)
    assert load_shard(good).tolist() == list(range(100))
    raw = good.read_bytes()
    cases = {"magic": b"\0\0\0\0" + raw[4:], "version": raw[:4] + b"\x09\0\0\0" + raw[8:],
             "bytes": raw[:-10], "header": raw[:100]}
    for what, content in cases.items():
        bad = tmp_path / f"bad_{what}.bin"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=f"{bad}.*(magic|version|bytes|header)"):
            load_shard(bad)


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
        assert r0[step] == one[2 * step] and r1[step] == one[2 * step + 1]  # = gradient accumulation 2
    seen = [w for batch in r0 + r1 for w in batch]
    assert len(seen) == len(set(seen)) and all(w % T == 0 for w in seen)  # no window twice in an epoch
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
            assert torch.equal(real, torch.arange(real[0], real[0] + len(real)))  # real tokens in order
            assert torch.equal(row_y[:-1] == pause.IGNORE, row_x[1:] == pause_id)  # S_ignore: pause targets only
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


def test_builtin_corpus():
    tok = get_tokenizer("byte")
    train, val = builtin_tokens(50, seed=0), builtin_tokens(50, seed=1)
    assert train.dtype == np.uint16 and train[0] == tok.eot_id and (train == tok.eot_id).sum() == 50
    assert np.array_equal(train, builtin_tokens(50, seed=0)) and not np.array_equal(train[:500], val[:500])
    assert tok.pause_id not in train


# ---- downloads, against a local HTTP server

class _Handler(http.server.BaseHTTPRequestHandler):
    files, ranges, honour_range = {}, [], True

    def do_GET(self):
        body = self.files[self.path]
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng[6:-1]) if rng and self.honour_range else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Handler.ranges.clear()
    _Handler.honour_range = True
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()


def test_download_resumes_a_partial_file(server, tmp_path):
    url, handler = server
    body = gzip.compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(5000)))
    handler.files = {"/c4.json.gz": body}
    dest = tmp_path / "c4.json.gz"
    (tmp_path / "c4.json.gz.part").write_bytes(body[:1000])  # an interrupted earlier download
    download(url + "/c4.json.gz", dest)
    assert dest.read_bytes() == body and handler.ranges == ["bytes=1000-"]
    assert not (tmp_path / "c4.json.gz.part").exists()
    download(url + "/c4.json.gz", dest)  # already there: nothing fetched
    assert len(handler.ranges) == 1
    # A server that ignores Range requests: the download starts over and is still right.
    handler.honour_range = False
    dest2 = tmp_path / "again.json.gz"
    (tmp_path / "again.json.gz.part").write_bytes(b"garbage")
    download(url + "/c4.json.gz", dest2)
    assert dest2.read_bytes() == body


def test_download_refuses_a_corrupt_gzip(server, tmp_path, capsys):
    url, handler = server
    handler.files = {"/bad.json.gz": gzip.compress(b'{"text": "x"}\n' * 1000)[:-20]}
    with pytest.raises(SystemExit, match="intact"):
        download(url + "/bad.json.gz", tmp_path / "bad.json.gz", retries=2)
    assert "corrupt download" in capsys.readouterr().out
    assert not (tmp_path / "bad.json.gz").exists() and not (tmp_path / "bad.json.gz.part").exists()


def test_c4_command_downloads_and_prepares(server, tmp_path, monkeypatch, capsys):
    import prepare
    url, handler = server
    docs = {f"/c4-train.{i:05d}-of-01024.json.gz": [f"train doc {i}.{j}" for j in range(30)] for i in range(2)}
    docs["/c4-validation.00000-of-00008.json.gz"] = [f"validation doc {j}" for j in range(10)]
    handler.files = {k: gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in v).encode())
                     for k, v in docs.items()}
    monkeypatch.setattr(prepare, "C4_URL", url + "/c4-{split}.{i:05d}-of-{n:05d}.json.gz")
    main(["c4", "--shards", "2", "--out", str(tmp_path / "c4"), "--tokenizer", "byte", "--workers", "1"])
    assert "200B training tokens" in capsys.readouterr().out
    tok = get_tokenizer("byte")
    for split, names in (("train", [k for k in docs if "train" in k]), ("val", [k for k in docs if "valid" in k])):
        want = [t for k in names for d in docs[k] for t in [tok.eot_id] + tok.encode(d)]
        assert load_shard(tmp_path / "c4" / f"{split}_000000.bin").tolist() == want


def test_task_download_decompresses_bz2(server, tmp_path, monkeypatch):
    import bz2
    import tasks
    url, handler = server
    records = [{"url": "http://www.freebase.com/view/en/x", "utterance": "what is x?",
                "targetValue": "(list (description X))"}]
    handler.files = {"/wq.json.bz2": bz2.compress(json.dumps(records).encode()), "/t.jsonl": b'{"q": 1}\n'}
    monkeypatch.setitem(tasks.TASK_FILES, "webquestions", {"webquestions.examples.train.json.bz2": url + "/wq.json.bz2",
                                                          "extra.jsonl": url + "/t.jsonl"})
    main(["task", "webquestions", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "webquestions" / "webquestions.examples.train.json").read_text()) == records
    assert (tmp_path / "webquestions" / "extra.jsonl").read_bytes() == b'{"q": 1}\n'
    with pytest.raises(SystemExit, match="unknown task"):
        main(["task", "mnist", "--out", str(tmp_path)])
