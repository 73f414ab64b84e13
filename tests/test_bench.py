import json
import math
from contextlib import nullcontext

import pytest
import torch

from tools import bench
from data import get_tokenizer

SMALL = ["--preset", "tiny", "--device", "cpu", "--batch_size", "2", "--block_size", "64",
         "--steps", "1", "--warmup", "1", "--rounds", "1", "--loader_seconds", "0.05",
         "--prompt_len", "24", "--num_pauses_eval", "3", "--new_tokens", "8",
         "--batch_prompts", "12", "--batch_prompt_len", "20"]


def numbers(obj):
    """Every number in a nested dict/list (bools excluded)."""
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_vocab_matches_tokenizer(name):
    tok = get_tokenizer(name)
    assert bench.VOCAB[name] == dict(vocab_size=tok.vocab_size, pause_id=tok.pause_id)


def test_bench_tiny_cpu_table_and_json(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    figures = bench.main(SMALL + ["--json", str(out)])
    table = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["loader"] == figures["loader"] and saved["config"]["preset"] == "tiny"

    assert set(figures["loader"]) == {"pause_frac 0", "pause_frac 0.1"}
    results = figures["train"]["results"]
    assert set(results) == {"pause_frac 0", "pause_frac 0.1", "preloaded batch"}
    for r in results.values():
        assert set(r) >= {"ms_per_step", "tokens_per_s", "mfu", "fetch_share", "loss",
                          "peak_mem_gb"}
        assert r["peak_mem_gb"] is None  # no memory counter on the CPU
        assert math.isclose(r["tokens_per_s"], 2 * 64 / (r["ms_per_step"] / 1e3))
    info = figures["train"]["info"]
    assert info["batch_size"] == 2 and info["tokens_per_step"] == 128
    # about M_pt / (N + M_pt) of the inputs are pauses: 6 of 70 slots at pause_frac 0.1, N = 64
    assert 0.8 < info["real_tokens_frac"] < 0.98
    gen = figures["generate"]
    assert gen["prompt_tokens"] == 24 + 3
    assert gen["same_tokens"]  # float32: the KV cache picks exactly the tokens of the full re-run
    # float32: the batch picks exactly the tokens of one-by-one decoding
    assert gen["batched_same_tokens"] and 5 <= gen["batched_prompt_lens"][0]
    assert gen["batched_prompt_lens"][1] <= 20
    assert math.isclose(gen["batched_speedup"],
                        gen["batched_tokens_per_s"] / gen["batch1_tokens_per_s"])
    nums = numbers({k: figures[k] for k in ("loader", "train", "generate", "peak_flops")})
    assert nums and all(math.isfinite(n) and n > 0 for n in nums)

    names = [c["name"] for c in figures["checks"]]
    assert len(names) == 6
    for c in figures["checks"]:
        result = "n/a" if c["passed"] is None else "PASS" if c["passed"] else "FAIL"
        assert f"| {c['name']} | " in table and table.count(result) >= 1
    # On a CPU the MFU and data-wait targets do not apply, nor do the generation targets at
    # these sizes.
    assert [c["passed"] is None for c in figures["checks"]] == [False, False] + [True] * 4
    assert "| loader | tokens/s per CPU core (2 x 64) |" in table


def test_checks_pass_and_fail_against_targets():
    cfg = bench.settle(bench.BenchConfig(preset="130m", device="cpu", compile=True,
                                         dtype="bfloat16"))
    cfg.device = "cuda"  # judged as if it ran on a GPU; nothing runs here

    def fig(loader, ms0, ms1, ms_pre, mfu, speedup, batched):
        res = {"pause_frac 0": dict(ms_per_step=ms0, mfu=mfu),
               "pause_frac 0.1": dict(ms_per_step=ms1), "preloaded batch": dict(ms_per_step=ms_pre)}
        return {"loader": {"pause_frac 0": 1e9, "pause_frac 0.1": loader},
                "train": {"results": res},
                "generate": {"speedup": speedup, "batched_speedup": batched}}

    good = bench.checks(cfg, fig(25e6, 100.0, 102.0, 101.0, 0.61, 12.0, 21.0), "NVIDIA H200")
    assert [c["passed"] for c in good] == [True, True, True, True, True, True]
    bad = bench.checks(cfg, fig(15e6, 100.0, 104.0, 100.0, 0.59, 8.0, 19.0), "NVIDIA H200")
    assert [c["passed"] for c in bad] == [False, False, False, False, False, False]
    # The MFU target is only for H100/H200.
    assert bench.checks(cfg, fig(25e6, 100.0, 102.0, 101.0, 0.61, 12.0, 21.0),
                        "NVIDIA A100")[2]["passed"] is None
    # The batched target of the tiny preset is for 64 prompts on the CPU: 5x.
    tiny = bench.settle(bench.BenchConfig(device="cpu"))
    rows = bench.checks(tiny, {"generate": {"speedup": 1.0, "batched_speedup": 5.5}}, "CPU")
    assert rows[-1]["passed"] is True and rows[-1]["target"] == ">= 5x"


@pytest.mark.parametrize("flags, message", [
    (["--what", "loader,sample"], "--what"),
    (["--pause_frac", "1.5"], "--pause_frac"),
    (["--steps", "-2"], "--steps must be >= 0"),
    (["--batch_prompts", "0"], "--batch_prompts must be >= 1"),
    # Pauses or prompts beyond the context are refused before any work (not a run without bound).
    (["--num_pauses_eval", "2000000"], "--num_pauses_eval 2000000 + --new_tokens 256 is more"),
    (["--batch_prompt_len", "4000"], "--batch_prompt_len 4000"),
])
def test_bad_flags_name_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_timed_steps_train_the_model():
    # The timed loop is a real training step: on one repeated batch the loss must fall.
    torch.manual_seed(0)
    cfg = bench.settle(bench.BenchConfig(device="cpu", block_size=32))
    model = bench.make_model(cfg, block_size=32)
    opt = model.configure_optimizers(0.0, 3e-3)
    x = torch.randint(0, 256, (2, 32))
    y = torch.roll(x, -1, 1)
    _, _, first, _ = bench.run_steps(model, opt, lambda: (x, y), (x, y), 1, nullcontext(), "cpu")
    _, _, last, _ = bench.run_steps(model, opt, lambda: (x, y), (x, y), 20, nullcontext(), "cpu")
    assert last < first - 0.5
