"""sample.py end to end, on a checkpoint made by the built-in default of train.py."""
import os

import pytest
import torch

import pause
import sample
import train
from tools.checkpoint import load_checkpoint
from test_gpt2 import hf_config, hf_state_dict, write_hf_dir

PROMPT = "a=3;b=a*4;c=b-2;c="


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "tmp"
    # `python train.py --max_steps 5 --out_dir DIR` on the built-in corpus, shortened: a smaller
    # corpus and batch, one validation batch.
    train.main(["--max_steps", "5", "--out_dir", str(out), "--builtin_docs", "300",
                "--batch_size", "4", "--eval_iters", "1", "--device", "cpu"])
    torch.set_num_threads(threads)
    return str(out / "ckpt.pt")


def test_sample_prints_completions_after_pauses(ckpt, capsys, one_thread):
    got = sample.main(["--ckpt", ckpt, "--prompt", PROMPT, "--num_pauses_eval", "10",
                       "--num_samples", "2", "--temperature", "0", "--max_new_tokens", "12",
                       "--device", "cpu"])
    printed = capsys.readouterr().out
    model, tok, _ = load_checkpoint(ckpt)
    expect = tok.decode(pause.pause_generate(model.eval(), [tok.encode(PROMPT)], 10,
                                             tok.pause_id, 12, stop_ids={tok.eot_id})[0])
    assert got == [expect, expect]  # greedy: both samples are the one pause-inference answer
    assert printed.count(PROMPT + expect) == 2 and "10 pauses (M_inf)" in printed


def test_sampling_follows_the_seed(ckpt, one_thread):
    flags = ["--ckpt", ckpt, "--num_samples", "3", "--temperature", "1.0", "--top_k", "50",
             "--max_new_tokens", "20", "--device", "cpu"]
    first = sample.main(flags + ["--seed", "1"])
    assert sample.main(flags + ["--seed", "1"]) == first
    assert sample.main(flags + ["--seed", "2"]) != first
    assert len(set(first)) > 1  # the samples of one batch draw differently


def test_sample_from_a_gpt2_directory(tmp_path, capsys, one_thread):
    folder = write_hf_dir(tmp_path / "hf", hf_state_dict(vocab=50257), hf_config(vocab=50257))
    got = sample.main(["--init_from", str(folder), "--prompt", "Hello", "--num_pauses_eval", "2",
                       "--max_new_tokens", "5", "--device", "cpu"])
    assert len(got) == 1 and f"{folder}: 2 pauses" in capsys.readouterr().out


def test_bad_requests_are_refused_before_work(ckpt, capsys):
    with pytest.raises(SystemExit, match=r"--prompt is 18 tokens; with --num_pauses_eval 10 and "
                                         r"--max_new_tokens 240 it needs 268 positions, more than "
                                         r"the context of 256"):
        sample.main(["--ckpt", ckpt, "--prompt", PROMPT, "--num_pauses_eval", "10",
                     "--max_new_tokens", "240", "--device", "cpu"])
    for flags, match in [(["--num_samples", "0"], "--num_samples must be >= 1"),
                         (["--temperature", "-1"], "--temperature must be >= 0"),
                         (["--temperature", "nan"], "--temperature: expected a finite number"),
                         (["--temperature", "inf"], "--temperature: expected a finite number"),
                         (["--init_from", "gpt2"], "--ckpt or --init_from, not both"),
                         (["--prompt", ""], "nothing to continue from"),
                         (["--ckpt", "missing/ckpt.pt"], "no checkpoint at missing/ckpt.pt")]:
        with pytest.raises(SystemExit) as e:
            sample.main(["--ckpt", ckpt] + flags)
        assert e.value.code == 2 and match in capsys.readouterr().err, flags


def test_ckpt_may_name_the_run_directory(ckpt, tmp_path, capsys, one_thread):
    flags = ["--temperature", "0", "--max_new_tokens", "4", "--device", "cpu"]
    by_dir = sample.main(["--ckpt", os.path.dirname(ckpt)] + flags)
    assert by_dir == sample.main(["--ckpt", ckpt] + flags)
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", str(tmp_path)] + flags)
    assert f"--ckpt {tmp_path}: no checkpoint at {tmp_path / 'ckpt.pt'}" in capsys.readouterr().err
