"""
Per choice and per answer, lm-evaluation-harness's numbers beside finetune.py's, on the same
export and the same items (docs/lm_eval/data), with M_inf = 10 pauses as in the task files:

    python docs/lm_eval/compare.py --model out/lm_eval_hf --samples out/lm_eval_results/DIR

--samples is the directory where `lm_eval ... --log_samples --output_path OUT` put its
samples_pause_piqa_*.jsonl and samples_pause_gsm8k_*.jsonl.
"""
import argparse
import glob
import json
import sys
from contextlib import nullcontext
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import tasks  # noqa: E402 (the repository is put on the path first)
from tasks import evaluate  # noqa: E402
from tools.checkpoint import configuration_name, load_pretrained  # noqa: E402

M_INF = 10


def samples(folder, task):
    path = glob.glob(str(Path(folder) / f"samples_{task}_*.jsonl"))[-1]
    rows = [json.loads(line) for line in open(path)]
    return sorted(rows, key=lambda r: r["doc_id"])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the exported directory lm_eval read")
    parser.add_argument("--samples", required=True, help="lm_eval's --log_samples directory")
    args = parser.parse_args()
    model, tok, carried = load_pretrained("", args.model)
    model.eval()
    print(f"{args.model}: {configuration_name(carried)} {carried}")

    piqa = tasks.load_task("piqa", str(ROOT / "docs/lm_eval/data/piqa_mini.jsonl"))
    block = model.config.block_size
    inputs = evaluate.choice_inputs(piqa, tok, block, M_INF, tok.pause_id, "append")
    rows = [row for example_rows, _ in inputs for row in example_rows]
    ours = evaluate.sum_logprobs(model, rows, tok.eot_id, 16, nullcontext())
    theirs = [float(r[0][0]) for s in samples(args.samples, "pause_piqa") for r in s["resps"]]
    print("item  lm-eval per choice      finetune.py per choice  picks (acc, acc_norm)")
    for i, ex in enumerate(piqa):
        pair = slice(2 * i, 2 * i + 2)
        picks = [tuple(tasks.choose(v[pair], ex["choices"]).values()) for v in (theirs, ours)]
        print(f"{i:4}  {theirs[pair][0]:10.4f} {theirs[pair][1]:10.4f}  "
              f"{ours[pair][0]:10.4f} {ours[pair][1]:10.4f}  lm-eval {picks[0]} ours {picks[1]}")
    gap = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"finetune.py against lm-eval per choice: at most {gap:.1e} nats apart")

    gsm8k = tasks.load_task("gsm8k", str(ROOT / "docs/lm_eval/data/gsm8k_mini.jsonl"))
    task = tasks.get_task("gsm8k")
    inputs = evaluate.generate_inputs(gsm8k, task, tok, block, M_INF, tok.pause_id, "append",
                                      32, False)
    records = evaluate.generate_answers(model, tok, task, gsm8k, inputs, M_INF, "append", 16,
                                        nullcontext())
    generated = [s["resps"][0][0] for s in samples(args.samples, "pause_gsm8k")]
    same = sum(r["prediction"] == g for r, g in zip(records, generated))
    print(f"gsm8k: {same} of {len(records)} generated answers equal, character for character")


if __name__ == "__main__":
    main()
