import errno
import gzip
import http.server
import json
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tiktoken

import data
from data import get_tokenizer, load_shard, read_checked_meta
from tools import prepare as prepare_module
from tools.common import UserError, download
from tools.prepare import iter_documents, main, prepare

DOCS = ["The first document.\nIt has two lines.", "Second: 3 + 4 = 7, and ünïcode too!", "",
        "<|endoftext|> in the text is ordinary text", "  leading spaces\n\n\nand blank lines  "]


def _write_jsonl_gz(path, docs, bad_line_after=None):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            record = {"text": d, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"}
            f.write(json.dumps(record) + "\n")
            if i == bad_line_after:
                f.write('{"text": "this line is cut off\n')


def test_prepare_c4_format_gives_tiktoken_tokens_plus_separators(tmp_path, capsys):
    path = tmp_path / "c4-train.00000-of-01024.json.gz"
    _write_jsonl_gz(path, DOCS, bad_line_after=1)
    main(["prepare", "--input", str(path), "--out", str(tmp_path / "shards"), "--val_every", "0",
          "--workers", "2", "--min_tokens", "1"])
    out = capsys.readouterr()
    assert f"lines not JSON with a `text`: 1; the first bad line is {path}:3" in out.out
    enc = tiktoken.get_encoding("gpt2")
    expected = [t for d in DOCS for t in [enc.eot_token] + enc.encode_ordinary(d)]
    tokens = load_shard(tmp_path / "shards" / "train_000000.bin")
    assert tokens.tolist() == expected
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["documents"], meta["skipped_lines"], meta["val_shards"]) \
        == ("gpt2", 5, 1, [])
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
    lines = [f"Line {i}: {'  ' if i % 7 == 0 else ''}some text, numbers {i * 37} and  spaces.\n"
             for i in range(300)]
    lines[50] = "\n"
    text = "".join(lines)
    path = tmp_path / "book.txt"
    path.write_text(text)
    pieces = list(iter_documents(path, Counter(), chunk_chars=500))
    assert len(pieces) > 10 and "".join(p for p, _ in pieces) == text
    assert [more for _, more in pieces] == [True] * (len(pieces) - 1) + [False]
    enc = tiktoken.get_encoding("gpt2")
    assert [t for p, _ in pieces for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)


BYTE = get_tokenizer("byte")


def documents(folder, split="train"):
    """The documents of a prepared split, decoded: the text between <|endoftext|> ids."""
    tokens = np.concatenate([load_shard(p) for p in sorted(Path(folder).glob(f"{split}_*.bin"))]
                            or [np.empty(0, np.uint16)]).tolist()
    docs, current = [], None
    for t in tokens:
        if t == BYTE.eot_id:
            if current is not None:
                docs.append(BYTE.decode(current))
            current = []
        else:
            current.append(t)
    return docs + ([BYTE.decode(current)] if current is not None else [])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _run(tmp_path, *args):
    main(["prepare", *map(str, args), "--tokenizer", "byte", "--workers", "1",
          "--min_tokens", "1"])


def test_txt_one_document_per_line_and_per_file(tmp_path):
    lines = [f"line {i}: {i * 7} apples" for i in range(300)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(lines[:150]) + "\n\n  \n" + "\n".join(lines[150:]) + "\n")
    _run(tmp_path, "--input", src, "--out", tmp_path / "lines", "--txt_docs", "line",
         "--val_every", "100")
    meta = json.loads((tmp_path / "lines" / "meta.json").read_text())
    assert (meta["documents"], meta["txt_docs"]) == (300, "line")  # blank lines hold no document
    assert documents(tmp_path / "lines", "val") == [lines[99], lines[199], lines[299]]
    assert documents(tmp_path / "lines", "train") == [s for i, s in enumerate(lines)
                                                       if i % 100 != 99]
    _run(tmp_path, "--input", src, "--out", tmp_path / "file", "--val_every", "100")
    assert documents(tmp_path / "file", "train") == [src.read_text()]


def test_exact_duplicates_are_dropped_before_the_split(tmp_path, capsys):
    # Without deduplication, document 9 (every 10th goes to val) repeats training documents.
    docs = [f"story {i % 4}" if i in (1, 5, 9, 13) else f"doc {i}" for i in range(40)]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    _run(tmp_path, "--input", src, "--out", tmp_path / "s", "--val_every", "10")
    kept = list(dict.fromkeys(docs))
    train, val = documents(tmp_path / "s", "train"), documents(tmp_path / "s", "val")
    assert train + val != kept and sorted(train + val) == sorted(kept)
    assert val == [d for i, d in enumerate(kept) if i % 10 == 9] and not set(train) & set(val)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert (meta["documents"], meta["duplicates"]) == (len(kept), len(docs) - len(kept))
    assert f"{len(kept)} documents ({len(docs) - len(kept)} exact duplicates dropped)" \
        in capsys.readouterr().out
    # A training document that repeats a validation document is the one dropped; whole .txt
    # files that are equal are one document.
    val_file, a, b = tmp_path / "v.jsonl", tmp_path / "a.txt", tmp_path / "b.txt"
    val_file.write_text(json.dumps({"text": "doc 3"}) + "\n")
    a.write_text("the same book\n" * 50)
    b.write_text("the same book\n" * 50)
    _run(tmp_path, "--input", src, a, b, "--val_input", val_file, "--out", tmp_path / "v")
    assert documents(tmp_path / "v", "val") == ["doc 3"]
    assert documents(tmp_path / "v", "train") == [d for d in kept if d != "doc 3"] + [
        a.read_text()]


def test_bad_lines_and_truncated_files_are_counted_and_skipped(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_bytes(b'{"text": "fine one"}\n\xff\xfe not utf-8\n{"text": 3}\nnot json\n'
                     b'{"text": "fine two"}\n')
    txt = tmp_path / "book.txt"
    txt.write_bytes(b"first line\n\xc3\x28 bad\nlast line\n")
    full = gzip.compress(b"".join(b'{"text": "gz doc %d"}\n' % i for i in range(2000)))
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(full[:len(full) // 2])  # a download cut short
    _run(tmp_path, "--input", good, txt, cut, "--out", tmp_path / "s", "--val_every", "0")
    out = capsys.readouterr().out
    docs = documents(tmp_path / "s", "train")
    gz = docs[3:]
    assert docs[:3] == ["fine one", "fine two", "first line\nlast line\n"]
    assert 0 < len(gz) < 2000 and gz == [f"gz doc {i}" for i in range(len(gz))]
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["skipped_lines"] == 4
    problems = meta["problems"]
    assert {k: problems[str(good)][k] for k in ("not_utf8", "not_json", "first_bad_line")} == \
        {"not_utf8": 1, "not_json": 2, "first_bad_line": 2}
    assert problems[str(txt)]["not_utf8"] == 1 and problems[str(cut)]["truncated"] == 1
    assert f"skipped in {good}: lines not valid UTF-8: 1; lines not JSON with a `text`: 2" in out
    assert f"skipped in {cut}: ends early" in out and f"skipped in {txt}" in out
    # Nothing usable at all: refused, naming the files, and nothing is written.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\n{}\n")
    with pytest.raises(SystemExit, match=f"no training text in {bad}"):
        _run(tmp_path, "--input", bad, "--out", tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_a_failed_prepare_leaves_the_previous_output_untouched(tmp_path, monkeypatch, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"document {i} " * 30}) + "\n" for i in range(60)))
    out = tmp_path / "out"
    main(["prepare", "--input", str(src), "--out", str(out), "--tokenizer", "gpt2",
          "--val_every", "10", "--shard_tokens", "2000", "--workers", "1"])
    (out / "notes.txt").write_text("mine")  # other files in the directory are left alone
    before = _snapshot(out)
    assert len([n for n in before if n.endswith(".bin")]) > 2
    csv, empty = tmp_path / "x.csv", tmp_path / "empty.jsonl"
    csv.write_text("a,b\n")
    empty.write_text("\n")
    failures = {"unknown input type": ["--input", csv],
                "does not exist": ["--input", tmp_path / "missing.txt"],
                "--shard_tokens must be in 1": ["--input", src, "--shard_tokens", "0"],
                "--shard_tokens must be in 1.": ["--input", src, "--shard_tokens", "-5"],
                "--val_every must be >= 0": ["--input", src, "--val_every", "-1"],
                "--workers must be >= 0": ["--input", src, "--workers", "-1"],
                "both --input and --val_input": ["--input", src, "--val_input", src],
                "no training text": ["--input", empty]}
    for message, args in failures.items():
        with pytest.raises(SystemExit) as e:
            main(["prepare", *map(str, args), "--out", str(out), "--tokenizer", "byte"])
        # refused at the door (argparse's line on stderr) or on reading (the exit's message)
        said = capsys.readouterr().err if e.value.code == 2 else e.value.code
        assert message in said and _snapshot(out) == before, message
    # A disk that fills up while the new shards are written.
    calls = []

    def full_disk(path, tokens, vocab_size):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_shard(path, tokens, vocab_size)
    real_write_shard = data.write_shard
    monkeypatch.setattr(prepare_module, "write_shard", full_disk)
    with pytest.raises(OSError, match="No space left"):
        prepare([str(src)], out, "byte", val_every=10, workers=1, shard_tokens=300)
    assert _snapshot(out) == before and calls[0].parent != out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "empty.jsonl", "out", "x.csv"]
    monkeypatch.undo()
    # Re-prepared with another tokenizer: no shard of the old one is left beside the new meta.json.
    prepare([str(src)], out, "byte", val_every=10, workers=1, shard_tokens=300)
    meta = read_checked_meta(out)
    assert meta["tokenizer"] == "byte" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("*.bin")) == sorted(
        [f"train_{i:06d}.bin" for i in range(len(meta["train_shards"]))]
        + [f"val_{i:06d}.bin" for i in range(len(meta["val_shards"]))])


@pytest.mark.parametrize("command", ["prepare", "c4", "task", "gpt2"])
def test_every_flag_explains_itself(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    # argparse writes one block a flag: "  --flag METAVAR  help", continued on indented lines.
    blocks = {b.split()[0]: " ".join(b.split()) for b in
              re.split(r"\n(?=  \S)", capsys.readouterr().out.split("options:")[1]) if b.strip()}
    flags = {"prepare": ["--input", "--out", "--tokenizer", "--txt_docs", "--val_input",
                         "--val_every", "--shard_tokens", "--min_tokens", "--workers"],
             "c4": ["--shards", "--out", "--tokenizer", "--workers"],
             "task": ["--name", "--out"], "gpt2": ["--name", "--out"]}[command]
    assert sorted(blocks) == sorted(["-h,", *flags])
    for flag in flags:
        help_text = blocks[flag].split(flag.upper()[2:], 1)[1]
        assert len(help_text.split()) >= 5 and "(default:" in help_text, flag
    for flag, choices in (("--tokenizer", "byte, gpt2"), ("--txt_docs", "file, line")):
        assert flag not in blocks or f"(choices: {choices})" in blocks[flag]


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
    with pytest.raises(UserError, match="intact"):
        download(url + "/bad.json.gz", tmp_path / "bad.json.gz", retries=2)
    assert "corrupt download" in capsys.readouterr().out
    assert not (tmp_path / "bad.json.gz").exists() and not (tmp_path / "bad.json.gz.part").exists()


def test_c4_command_downloads_and_prepares(server, tmp_path, monkeypatch, capsys):
    from tools import prepare
    url, handler = server
    docs = {f"/c4-train.{i:05d}-of-01024.json.gz": [f"train doc {i}.{j}" for j in range(60)]
            for i in range(2)}
    docs["/c4-validation.00000-of-00008.json.gz"] = [f"validation doc {j}" for j in range(10)]
    handler.files = {k: gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in v).encode())
                     for k, v in docs.items()}
    monkeypatch.setattr(prepare, "C4_URL", url + "/c4-{split}.{i:05d}-of-{n:05d}.json.gz")
    main(["c4", "--shards", "2", "--out", str(tmp_path / "c4"), "--tokenizer", "byte",
          "--workers", "1"])
    assert "200B training tokens" in capsys.readouterr().out
    tok = get_tokenizer("byte")
    for split, word in (("train", "train"), ("val", "valid")):  # 60 x 2 documents: > 1024 tokens
        names = [k for k in docs if word in k]
        want = [t for k in names for d in docs[k] for t in [tok.eot_id] + tok.encode(d)]
        assert load_shard(tmp_path / "c4" / f"{split}_000000.bin").tolist() == want


def test_task_download_decompresses_bz2(server, tmp_path, monkeypatch, capsys):
    import bz2
    import tasks
    url, handler = server
    records = [{"url": "http://www.freebase.com/view/en/x", "utterance": "what is x?",
                "targetValue": "(list (description X))"}]
    handler.files = {"/wq.json.bz2": bz2.compress(json.dumps(records).encode()),
                     "/t.jsonl": b'{"q": 1}\n'}
    monkeypatch.setitem(tasks.TASK_FILES, "webquestions",
                        {"webquestions.examples.train.json.bz2": url + "/wq.json.bz2",
                         "extra.jsonl": url + "/t.jsonl"})
    main(["task", "webquestions", "--out", str(tmp_path)])
    plain = tmp_path / "webquestions" / "webquestions.examples.train.json"
    assert json.loads(plain.read_text()) == records
    assert (tmp_path / "webquestions" / "extra.jsonl").read_bytes() == b'{"q": 1}\n'
    with pytest.raises(SystemExit):
        main(["task", "mnist", "--out", str(tmp_path)])
    assert "--name: invalid choice: 'mnist'" in capsys.readouterr().err
