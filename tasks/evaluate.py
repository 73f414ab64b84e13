"""
A task's examples as rows with pauses, and the two ways finetune.py evaluates a model on them:
a choice task by the likelihood of each choice (score_choices), a generation task by greedy
pause-inference (generate_answers). Each returns one record per example, in order. The rows are
pause.finetune_example's: the prompt, M pauses (or filler tokens), then an answer.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

import pause
import tasks
from tools.common import require

M_INF = "--num_pauses_eval (M_inf)"


# -----------------------------------------------------------------------------------------------
# Rows with pauses. The context is finite: when prompt + pauses + answer do not fit, the prompt
# is cut from the left (its end, next to the question, matters most); never pauses or answer.

def fit_prompt(prompt_ids, room, settings):
    """(the last `room` tokens of the prompt, whether any were cut)."""
    require(room >= 1, f"{settings} leave no room for the prompt in the context; use fewer "
            "pauses, a shorter answer, or a model with a longer context")
    return prompt_ids[-room:], len(prompt_ids) > room


def answer_rows(prompt_ids, answers, m, delay_id, where, block_size, flag):
    """pause.finetune_example's (x, y) for each answer after the prompt and M pauses (delay_id:
    the pause, or a filler token), and whether the prompt was cut to fit the longest."""
    longest = max(map(len, answers))
    settings = f"{flag} {m} and an answer of {longest} tokens"
    kept, cut = fit_prompt(prompt_ids, block_size - m - longest + 1, settings)
    rows = [pause.finetune_example(kept, a, m, delay_id, where, block_size)
            for a in answers]
    return rows, cut


def encoded_prompts(tok, examples):
    return tok.encode_batch([e["prompt"] for e in examples])


def pad_rows(rows, pad_id):
    """Right-pad (x, y) rows into (B, T) tensors: x with any valid id, y with IGNORE."""
    xs, ys = zip(*rows)
    x = pad_sequence(xs, batch_first=True, padding_value=pad_id)
    y = pad_sequence(ys, batch_first=True, padding_value=pause.IGNORE)
    return x, y


# -----------------------------------------------------------------------------------------------
# Evaluation, two plain paths: a choice task by the likelihood of each choice, a generation
# task by greedy pause-inference. Both see the prompt with M_inf pauses (or filler tokens), as
# in finetuning. The inputs are built before finetuning, so that settings which do not fit the
# context stop the run before its first step.

def choice_inputs(examples, tok, block_size, m_inf, delay_id, where):
    """Per example: one row per choice, and whether its prompt was cut."""
    inputs = []
    for ex, prompt in zip(examples, encoded_prompts(tok, examples)):
        choices = [tok.encode(c) for c in ex["choices"]]
        inputs.append(answer_rows(prompt, choices, m_inf, delay_id, where,
                                  block_size, M_INF))
    return inputs


def generate_inputs(examples, task, tok, block_size, m_inf, delay_id, where, max_new,
                    filler):
    """Per example: the gold answer's row (for its loss), the prefix to decode from, how
    many tokens to decode, and whether the prompt was cut for them."""
    settings = f"{M_INF} {m_inf} and --max_new_tokens {max_new}"
    inputs = []
    for ex, prompt in zip(examples, encoded_prompts(tok, examples)):
        gold = tasks.answer_ids(tok, task, ex["target"])
        (row,), _ = answer_rows(prompt, [gold], m_inf, delay_id, where, block_size,
                                M_INF)
        prefix, cut = fit_prompt(prompt, block_size - m_inf - max_new, settings)
        if filler:  # the filler baseline's tokens go into the prefix itself
            prefix = pause.append_pauses(prefix, m_inf, delay_id, where).tolist()
        n_new = max_new
        if task.stop == "length":  # LAMBADA: as many tokens as its target has
            n_new = len(tok.encode(ex["target"]))
        inputs.append({"row": row, "prefix": prefix, "n_new": n_new, "cut": cut})
    return inputs


@torch.no_grad()
def sum_logprobs(model, rows, pad_id, batch_size, autocast):
    """Sum of the log-probabilities of each row's targets (y != IGNORE)."""
    out = []
    for i in range(0, len(rows), batch_size):
        x, y = pad_rows(rows[i:i + batch_size], pad_id)
        x, y = x.to(model.device), y.to(model.device)
        with autocast:
            logits = model(x)[0]
        # lm-evaluation-harness's loglikelihood: a softmax over every output row, the
        # vocabulary's padding and the pause included, so that a choice scores as lm-eval
        # scores the exported model (the decoder bans those ids; that moves a score by about
        # 0.01 nats, enough to flip a close acc_norm pick). Only scored positions count.
        scored = y != pause.IGNORE
        logp = F.log_softmax(logits[scored].float(), dim=-1)
        picked = logp.gather(1, y[scored].unsqueeze(1)).squeeze(1)
        per_row = torch.zeros(x.size(0), device=picked.device)
        out += per_row.index_add_(0, scored.nonzero()[:, 0], picked).tolist()
    return out


def score_choices(model, tok, examples, inputs, batch_size, autocast):
    """One record per example, in order: the picks of lm-evaluation-harness's acc and
    acc_norm and their metrics."""
    rows = [row for example_rows, _ in inputs for row in example_rows]
    logps = sum_logprobs(model, rows, tok.eot_id, batch_size, autocast)
    records, start = [], 0
    for ex, (example_rows, cut) in zip(examples, inputs):
        end = start + len(example_rows)
        picks = tasks.choose(logps[start:end], ex["choices"])
        start = end
        metrics = {k: float(i == ex["label"]) for k, i in picks.items()}
        records.append({"cut": cut, "prediction": picks, "label": ex["label"],
                        "metrics": metrics})
    return records


@torch.no_grad()
def generate_answers(model, tok, task, examples, inputs, m_inf, where, batch_size,
                     autocast, progress=False):
    """One record per example, in order: the greedy answer after M_inf pauses, its
    metrics, and the gold answer's loss in nats (a smooth measure that still separates
    configurations when a small model gets few answers exactly right)."""
    gold = [inp["row"] for inp in inputs]
    logps = sum_logprobs(model, gold, tok.eot_id, batch_size, autocast)
    # Prompts sorted by length share a batch, so little of it is left padding.
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]["prefix"]))
    stop = tasks.stop_ids(tok, task)
    new = [None] * len(inputs)
    for s in tqdm(range(0, len(order), batch_size), desc="decode", disable=not progress):
        batch = order[s:s + batch_size]
        prefixes = [inputs[i]["prefix"] for i in batch]
        n_new = max(inputs[i]["n_new"] for i in batch)
        with autocast:
            out = pause.pause_generate(model, prefixes, m_inf, tok.pause_id, n_new,
                                       where=where, stop_ids=stop)
        for i, ids in zip(batch, out):  # a row that asked for fewer keeps its number
            new[i] = ids[:inputs[i]["n_new"]]
    records = []
    for ex, inp, ids, logp in zip(examples, inputs, new, logps):
        prediction = tok.decode(ids)
        records.append({"cut": inp["cut"], "prediction": prediction,
                        "answers": ex["answers"], "answer_nll": -logp,
                        "answer_tokens": int((inp["row"][1] != pause.IGNORE).sum()),
                        "metrics": tasks.score(task, prediction, ex["answers"])})
    return records


def gather(records, indices, world_size):
    """Every rank's records with their example index, in example order."""
    records = [{"index": i, **r} for i, r in zip(indices, records)]
    if world_size == 1:
        return records
    gathered = [None] * world_size
    dist.all_gather_object(gathered, records)
    return sorted((r for part in gathered for r in part), key=lambda r: r["index"])
