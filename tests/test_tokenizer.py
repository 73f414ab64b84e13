import pytest
import tiktoken

from data import get_tokenizer


def test_gpt2_pause_tokenizer_ids():
    tok = get_tokenizer("gpt2")
    base = tiktoken.get_encoding("gpt2")
    assert (tok.eot_id, tok.pause_id, tok.vocab_size) == (50256, 50257, 50258)
    text = "Think before you speak: 3 + 4 = 7.\n"
    assert tok.encode(text) == base.encode_ordinary(text)
    assert tok.decode([tok.pause_id]) == "<|pause|>"


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_special_strings_in_text_are_ordinary_text(name):
    tok = get_tokenizer(name)
    text = "a <|pause|> b <|endoftext|> c ünïcode"
    ids = tok.encode(text)
    assert tok.pause_id not in ids and tok.eot_id not in ids
    assert tok.decode(ids) == text


def test_byte_tokenizer():
    tok = get_tokenizer("byte")
    assert (tok.eot_id, tok.pause_id, tok.vocab_size) == (256, 257, 258)
    assert tok.encode("12+3é") == list("12+3é".encode())


def test_unknown_tokenizer():
    # A library function: the kind of error is tested, its wording belongs to the scripts' checks.
    with pytest.raises(ValueError):
        get_tokenizer("llama")
