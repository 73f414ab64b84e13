"""The export as transformers and lm-evaluation-harness use it. Neither is a dependency of this
project: each test is skipped where they are not installed."""
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import pause
import tasks
from data import get_tokenizer
from tasks import evaluate
from tools import gpt2
from tools.checkpoint import load_pretrained
from tools.export import export_hf
from test_export import TEXTS, checkpoint

ROOT = Path(__file__).resolve().parent.parent
M_INF = 10  # the pauses in docs/lm_eval's prompt templates


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_transformers_loads_the_export_as_is(tmp_path, transformers, name, one_thread):
    model = checkpoint(tmp_path / "ckpt.pt", name, block_size=64)
    out = export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    tok = get_tokenizer(name)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ids == tok.enc.encode(text, allowed_special="all")
        assert theirs.decode(ids) == text
    assert theirs.eos_token_id == tok.eot_id
    assert theirs.convert_tokens_to_ids("<|pause|>") == tok.pause_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(hf(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
        # generate() with the exported generation_config: greedy, no pause or padding id, the
        # same tokens as pause-inference.
        prompt = tok.encode("Question: 2+3?\nAnswer:")
        ours = pause.pause_generate(model, prompt, 4, tok.pause_id, 12, stop_ids={tok.eot_id})
        row = torch.tensor([prompt + [tok.pause_id] * 4])
        new = hf.generate(row, max_new_tokens=12, do_sample=False)[0, row.size(1):].tolist()
    assert new[:len(ours)] == ours and all(t < tok.pause_id for t in new)


def test_init_from_a_save_pretrained_directory(tmp_path, transformers, one_thread):
    config = transformers.GPT2Config(vocab_size=50257, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    model, tok, carried = load_pretrained("", str(tmp_path / "saved"))
    assert carried == {"pause_frac": 0.0, "num_pauses": None}  # GPT-2's own kind: StdPT
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval()(idx)[0][..., :50257]
        assert torch.allclose(ours, hf(idx).logits, atol=1e-4, rtol=1e-4)
    # And the export of a finetuned model, saved again by transformers, still loads.
    checkpoint(tmp_path / "ckpt.pt")
    export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    again.save_pretrained(tmp_path / "resaved")
    model, _, carried = load_pretrained("", str(tmp_path / "resaved"))
    assert carried == {"pause_frac": 0.1, "num_pauses": 10}
    first = gpt2.from_pretrained(str(tmp_path / "hf"), tok.vocab_size).state_dict()
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())


def project_scores(model, tok, m_inf):
    """finetune.py's evaluation on docs/lm_eval's data: per choice, its log-likelihood
    (tasks.evaluate.sum_logprobs); per GSM8K question, the greedy answer."""
    block = model.config.block_size
    piqa = tasks.load_task("piqa", str(ROOT / "docs/lm_eval/data/piqa_mini.jsonl"))
    inputs = evaluate.choice_inputs(piqa, tok, block, m_inf, tok.pause_id, "append")
    rows = [row for example_rows, _ in inputs for row in example_rows]
    ours = evaluate.sum_logprobs(model, rows, tok.eot_id, 16, nullcontext())
    gsm8k = tasks.load_task("gsm8k", str(ROOT / "docs/lm_eval/data/gsm8k_mini.jsonl"))
    task = tasks.get_task("gsm8k")
    inputs = evaluate.generate_inputs(gsm8k, task, tok, block, m_inf, tok.pause_id, "append",
                                      32, False)
    records = evaluate.generate_answers(model, tok, task, gsm8k, inputs, m_inf, "append", 16,
                                        nullcontext())
    return piqa, ours, [r["prediction"] for r in records]


def test_lm_eval_scores_the_export_as_finetune_does(tmp_path, monkeypatch, transformers,
                                                    one_thread):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)  # the task files name their data relative to the repository
    model = checkpoint(tmp_path / "ckpt.pt", block_size=128)  # room for prompt, pauses, answer
    out = export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    tok = get_tokenizer("gpt2")
    piqa, ours, predictions = project_scores(model.eval(), tok, M_INF)

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={out}", tasks=["pause_piqa", "pause_gsm8k"],
        task_manager=TaskManager(include_path=str(ROOT / "docs/lm_eval")), device="cpu",
        batch_size=1, log_samples=True)
    samples = results["samples"]
    theirs = [float(r[0][0]) for s in samples["pause_piqa"] for r in s["resps"]]
    assert len(theirs) == len(ours) == 2 * len(piqa)
    # the same log-likelihood per choice, and so the same picks
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-4
    for i, ex in enumerate(piqa):
        assert tasks.choose(ours[2 * i:2 * i + 2], ex["choices"]) == tasks.choose(
            theirs[2 * i:2 * i + 2], ex["choices"])
    generated = [s["resps"][0][0] for s in sorted(samples["pause_gsm8k"],
                                                   key=lambda s: s["doc_id"])]
    assert generated == predictions
