"""
The nine downstream tasks of the paper (Sec. 4): where their files come from, how each file format
becomes examples (prompt, answer or choices), and how each prediction is scored. Nothing here is
about pauses: finetune.py turns these examples into rows with pauses and evaluates them.

    load_task(name, path, split, n)   -> [{"prompt": ..., "target": ..., "answers": [...]}, ...]
    score_prediction(metric, prediction, golds)   the metric of a generation task
"""
import gzip
import json
import os
import re
import string
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from data import WORLD_TASKS, synthetic_task

# The downstream tasks' original public files. load_task reads them from DIR/NAME/ under these
# file names; `python prepare.py task NAME --out DIR` downloads them.
GITHUB = "https://raw.githubusercontent.com/"
TASK_FILES = {
    "gsm8k": {
        "train.jsonl": GITHUB + "openai/grade-school-math/master/grade_school_math/data/train.jsonl",
        "test.jsonl": GITHUB + "openai/grade-school-math/master/grade_school_math/data/test.jsonl"},
    "squad": {
        "train-v1.1.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
        "dev-v1.1.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json"},
    "coqa": {
        "coqa-train-v1.0.json": "https://nlp.stanford.edu/data/coqa/coqa-train-v1.0.json",
        "coqa-dev-v1.0.json": "https://nlp.stanford.edu/data/coqa/coqa-dev-v1.0.json"},
    "commonsense_qa": {
        "train_rand_split.jsonl": "https://s3.amazonaws.com/commensenseqa/train_rand_split.jsonl",
        "dev_rand_split.jsonl": "https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl"},
    "piqa": {
        "train.jsonl": "https://yonatanbisk.com/piqa/data/train.jsonl",
        "train-labels.lst": "https://yonatanbisk.com/piqa/data/train-labels.lst",
        "valid.jsonl": "https://yonatanbisk.com/piqa/data/valid.jsonl",
        "valid-labels.lst": "https://yonatanbisk.com/piqa/data/valid-labels.lst"},
    "hellaswag": {
        "hellaswag_train.jsonl": GITHUB + "rowanz/hellaswag/master/data/hellaswag_train.jsonl",
        "hellaswag_val.jsonl": GITHUB + "rowanz/hellaswag/master/data/hellaswag_val.jsonl"},
    "lambada": {
        "lambada_test.jsonl": "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"},
    "webquestions": {  # the Stanford release, bzip2-compressed; decompressed after the download
        "webquestions.examples.train.json.bz2": "https://nlp.stanford.edu/static/software/sempre/release-emnlp2013/"
                                                "lib/data/webquestions/dataset_11/webquestions.examples.train.json.bz2",
        "webquestions.examples.test.json.bz2": "https://nlp.stanford.edu/static/software/sempre/release-emnlp2013/"
                                               "lib/data/webquestions/dataset_11/webquestions.examples.test.json.bz2"},
    "nq_open": {
        "NQ-open.train.jsonl": GITHUB + "google-research-datasets/natural-questions/master/nq_open/NQ-open.train.jsonl",
        "NQ-open.dev.jsonl": GITHUB + "google-research-datasets/natural-questions/master/nq_open/NQ-open.dev.jsonl"},
}
TASK_ALIASES = {"commonsenseqa": "commonsense_qa", "csqa": "commonsense_qa", "nq": "nq_open"}


# -----------------------------------------------------------------------------------------------
# Metrics. SQuAD's exact match and F1 (the maximum over the gold answers), GSM8k's final number,
# LAMBADA's last word.

def normalize_answer(s):
    """SQuAD v1.1's normalization: lower-case, drop ASCII punctuation, drop the articles
    a/an/the, collapse white space."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _golds(golds):
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers to compare with")
    return golds


def exact_match(prediction, golds):
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in _golds(golds)))


def _f1_one(prediction, gold):
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:  # SQuAD v2's convention: two empty answers agree, one empty answer scores 0
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())  # shared tokens, each counted at most as often as in both
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction, golds):
    """Token-overlap F1 after normalization, the maximum over the gold answers."""
    return max(_f1_one(prediction, g) for g in _golds(golds))


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text):
    """The last number in the text as a Decimal ('1,234' -> 1234, '-3.50' -> -3.5), or None."""
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


def gsm8k_gold(answer):
    """GSM8k's gold number: the one after '####' in the reference solution."""
    if "####" not in answer:
        raise ValueError("a GSM8k answer ends with '#### <number>'; this one has no '####'")
    number = last_number(answer.split("####")[-1])
    if number is None:
        raise ValueError(f"no number after '####' in the GSM8k answer {answer[-40:]!r}")
    return number


def gsm8k_correct(prediction, gold_answer):
    """GSM8k accuracy: the last number of the prediction equals the number after '####'."""
    return float(last_number(prediction) == gsm8k_gold(gold_answer))


def lambada_correct(prediction, word):
    """LAMBADA: the first word the model produces is the passage's last word (ASCII punctuation
    around either is ignored)."""
    words = prediction.split()
    return float(bool(words) and words[0].strip(string.punctuation) == word.strip(string.punctuation))


def score_prediction(metric, prediction, golds):
    if metric == "em":
        return exact_match(prediction, golds)
    if metric == "f1":
        return f1(prediction, golds)
    if metric == "gsm8k":
        return gsm8k_correct(prediction, golds[0])
    if metric == "lambada":
        return lambada_correct(prediction, golds[0])
    if metric == "exact":  # the built-in tasks: the answer string itself
        return float(prediction.strip() in [g.strip() for g in golds])
    raise ValueError(f"unknown metric {metric!r}")


# -----------------------------------------------------------------------------------------------
# The tasks. Every loader turns records into examples of one shape:
#   generation:       {'prompt', 'target', 'answers'}   target = training continuation, answers = golds
#   multiple choice:  {'prompt', 'target', 'choices', 'label'}   choices are the scored continuations
# The prompt templates, in the style of evaluation harnesses (the answer follows after a space):
QA_PROMPT = "Question: {question}\nAnswer:"
SQUAD_PROMPT = "Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\nAnswer:"
COQA_TURN = "Q: {question}\n\nA:"  # earlier turns as "Q: ...\n\nA: ...\n\n" after the story
CSQA_PROMPT = "Question: {question}\n{choices}\nAnswer:"  # choices as "A. text" lines


def read_records(path):
    """[(where, record)] from a JSON file, a JSON Lines file, or either gzipped. `where` names the
    file and the line (JSON Lines) or the file (one JSON document), for error messages."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as UTF-8 text{' (gzip)' if path.endswith('.gz') else ''}: {e}")
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    if not re.search(r"\.jsonl(\.gz)?$", path):
        try:  # one JSON document (SQuAD, CoQA and WebQuestions originals) ...
            whole = json.loads(text)
            return [(f"{path}, record {i}", r) for i, r in enumerate(whole)] if isinstance(whole, list) else [(path, whole)]
        except json.JSONDecodeError:
            pass
    records = []  # ... or one JSON record a line
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((f"{path}, line {i}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {i}: not valid JSON ({e.msg}); expected one JSON record a "
                                 "line (JSON Lines) or one JSON document")
    return records


def field(record, key, where, task, kind=None):
    """record[key], or a ValueError that names the file, the line and the missing field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object (a {task} record), got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: field {key!r} is missing from this {task} record (it has "
                         f"{sorted(record)}); see the record formats in TASKS.md")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{where}: field {key!r} of this {task} record should be a "
                         f"{getattr(kind, '__name__', 'list or dict')}, got {type(value).__name__}")
    return value


def gen_example(prompt, answers, where, target=None):
    answers = [a for a in answers if isinstance(a, str) and a.strip()]
    if not answers:
        raise ValueError(f"{where}: no non-empty gold answer")
    return {"prompt": prompt, "target": " " + answers[0] if target is None else target, "answers": answers}


def choice_example(prompt, choices, label, where):
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {label!r} is not a choice number (an unlabeled test split? "
                         "evaluate on the validation/dev file)") from None
    if not 0 <= label < len(choices):
        raise ValueError(f"{where}: label {label} is outside the {len(choices)} choices")
    choices = [" " + c.strip() for c in choices]
    return {"prompt": prompt, "target": choices[label], "choices": choices, "label": label}


def parse_gsm8k(records, path):
    out = []
    for where, r in records:
        question, answer = field(r, "question", where, "GSM8k", str), field(r, "answer", where, "GSM8k", str)
        try:
            gsm8k_gold(answer)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        # the whole solution is the target (steps, calculator notes, '#### n'); decoding stops at <|endoftext|>
        out.append(gen_example(QA_PROMPT.format(question=question), [answer], where))
    return out


def parse_squad(records, path):
    out = []
    for where, r in records:
        if isinstance(r, dict) and "data" in r:  # the original nested layout
            for i, article in enumerate(field(r, "data", where, "SQuAD", list)):
                title = field(article, "title", f"{where}, data[{i}]", "SQuAD")
                for j, para in enumerate(field(article, "paragraphs", f"{where}, data[{i}]", "SQuAD", list)):
                    context = field(para, "context", f"{where}, data[{i}].paragraphs[{j}]", "SQuAD", str)
                    for k, qa in enumerate(field(para, "qas", f"{where}, data[{i}].paragraphs[{j}]", "SQuAD", list)):
                        w = f"{where}, data[{i}].paragraphs[{j}].qas[{k}]"
                        answers = [field(a, "text", w + ".answers", "SQuAD") for a in field(qa, "answers", w, "SQuAD", list)]
                        prompt = SQUAD_PROMPT.format(title=title, context=context, question=field(qa, "question", w, "SQuAD"))
                        out.append(gen_example(prompt, answers, w + " (SQuAD v2's unanswerable questions are not supported)"))
        else:  # Hugging Face's flat layout: one question a record, answers {'text': [...], 'answer_start': [...]}
            answers = field(r, "answers", where, "SQuAD", dict)
            prompt = SQUAD_PROMPT.format(title=r.get("title", ""), context=field(r, "context", where, "SQuAD", str),
                                         question=field(r, "question", where, "SQuAD", str))
            out.append(gen_example(prompt, field(answers, "text", where + ", answers", "SQuAD", list), where))
    return out


def parse_coqa(records, path):
    out = []
    stories = [(f"{w}, data[{i}]", s) for w, r in records if isinstance(r, dict) and "data" in r
               for i, s in enumerate(field(r, "data", w, "CoQA", list))] or records
    for where, s in stories:
        story, questions = field(s, "story", where, "CoQA", str), field(s, "questions", where, "CoQA", list)
        answers = field(s, "answers", where, "CoQA", (list, dict))
        if isinstance(answers, dict):  # Hugging Face: questions [str], answers {'input_text': [str], ...}
            turns = [(q, [a]) for q, a in zip(questions, field(answers, "input_text", where, "CoQA", list))]
        else:  # original: questions/answers [{'turn_id', 'input_text'}], dev adds additional_answers
            extra = s.get("additional_answers", {})
            turns = []
            for t, (q, a) in enumerate(zip(questions, answers)):
                w = f"{where}, questions[{t}]"
                golds = [field(a, "input_text", w, "CoQA")] + [x[t]["input_text"] for x in extra.values() if t < len(x)]
                turns.append((field(q, "input_text", w, "CoQA"), golds))
        if len(turns) != len(questions):
            raise ValueError(f"{where}: {len(questions)} questions but {len(turns)} answers")
        history = story + "\n\n"
        for t, (q, golds) in enumerate(turns):
            out.append(gen_example(history + COQA_TURN.format(question=q), golds, f"{where}, turn {t + 1}"))
            history += COQA_TURN.format(question=q) + " " + golds[0] + "\n\n"
    return out


def parse_commonsense_qa(records, path):
    out = []
    for where, r in records:
        q = field(r, "question", where, "CommonSenseQA")
        if isinstance(q, dict):  # original: question {'stem', 'choices': [{'label', 'text'}]}
            stem, choices = field(q, "stem", where + ", question", "CommonSenseQA"), field(q, "choices", where + ", question", "CommonSenseQA", list)
            labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
        else:  # Hugging Face: question str, choices {'label': [...], 'text': [...]}
            choices = field(r, "choices", where, "CommonSenseQA", dict)
            stem, labels, texts = q, field(choices, "label", where, "CommonSenseQA"), field(choices, "text", where, "CommonSenseQA")
        key = field(r, "answerKey", where, "CommonSenseQA")
        if key not in labels:
            raise ValueError(f"{where}: answerKey {key!r} is not one of the choice labels {labels} (an "
                             "unlabeled test split? evaluate on the dev/validation file)")
        lines = "\n".join(f"{lab}. {text}" for lab, text in zip(labels, texts))
        ex = choice_example(CSQA_PROMPT.format(question=stem.strip(), choices=lines), texts, labels.index(key), where)
        ex["answers"] = [texts[ex["label"]]]  # the paper decodes the answer and scores exact match
        out.append(ex)
    return out


def parse_piqa(records, path):
    labels = None
    if records and isinstance(records[0][1], dict) and "label" not in records[0][1]:
        # The original release keeps the labels beside the data: train.jsonl + train-labels.lst.
        base = re.sub(r"\.jsonl?(\.gz)?$", "", path)
        lst = base + "-labels.lst"
        if not os.path.exists(lst):
            raise ValueError(f"{path}: PIQA records carry no 'label', and the labels file {lst} (one 0/1 a "
                             "line, from the original release) is missing")
        with open(lst, encoding="utf-8") as f:
            labels = [(f"{lst}, line {i}", line.strip()) for i, line in enumerate(f, 1) if line.strip()]
        if len(labels) != len(records):
            raise ValueError(f"{lst} has {len(labels)} labels but {path} has {len(records)} records")
    out = []
    for i, (where, r) in enumerate(records):
        goal, sols = field(r, "goal", where, "PIQA", str), [field(r, k, where, "PIQA", str) for k in ("sol1", "sol2")]
        label_where, label = labels[i] if labels else (where, field(r, "label", where, "PIQA"))
        out.append(choice_example(QA_PROMPT.format(question=goal), sols, label, label_where))
    return out


def _hellaswag_clean(text):
    # WikiHow contexts carry markup such as '[title]' and '[header]'; harnesses clean it like this.
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def parse_hellaswag(records, path):
    out = []
    for where, r in records:
        ctx = field(r, "ctx_a", where, "HellaSwag", str) + " " + field(r, "ctx_b", where, "HellaSwag", str).capitalize()
        prompt = _hellaswag_clean(field(r, "activity_label", where, "HellaSwag", str) + ": " + ctx)
        endings = [_hellaswag_clean(e) for e in field(r, "endings", where, "HellaSwag", list)]
        out.append(choice_example(prompt, endings, field(r, "label", where, "HellaSwag"), where))
    return out


def parse_lambada(records, path):
    out = []
    for where, r in records:
        text = field(r, "text", where, "LAMBADA", str).rstrip()
        cut = text.rfind(" ")
        if cut <= 0:
            raise ValueError(f"{where}: a LAMBADA passage needs several words; the target is the last one")
        out.append(gen_example(text[:cut], [text[cut + 1:]], where))
    return out


def parse_webquestions(records, path):
    out = []
    for where, r in records:
        if isinstance(r, dict) and "targetValue" in r:  # original: utterance, targetValue "(list (description X) ...)"
            answers = [a or b for a, b in re.findall(r'\(description (?:"((?:[^"\\]|\\.)*)"|([^()]*))\)', r["targetValue"])]
            question = field(r, "utterance", where, "WebQuestions", str)
        else:  # Hugging Face: question, answers [str]
            question, answers = field(r, "question", where, "WebQuestions", str), field(r, "answers", where, "WebQuestions", list)
        out.append(gen_example(QA_PROMPT.format(question=question), answers, where))
    return out


def parse_nq_open(records, path):
    return [gen_example(QA_PROMPT.format(question=field(r, "question", w, "NaturalQuestions", str)),
                        field(r, "answer", w, "NaturalQuestions", list), w) for w, r in records]


@dataclass(frozen=True)
class Task:
    parse: object       # (records, path) -> examples
    metric: str         # em | f1 | gsm8k | lambada | exact | acc (a choice scored by likelihood)
    files: tuple        # (train file names, evaluation file names) of the original release
    stop: str = "newline"  # generation stops at a newline, or only at <|endoftext|> (GSM8k's solutions)


TASKS = {
    "gsm8k": Task(parse_gsm8k, "gsm8k", (["train.jsonl"], ["test.jsonl"]), stop="eot"),
    "squad": Task(parse_squad, "em", (["train-v1.1.json"], ["dev-v1.1.json"])),
    "coqa": Task(parse_coqa, "f1", (["coqa-train-v1.0.json"], ["coqa-dev-v1.0.json"])),
    "commonsense_qa": Task(parse_commonsense_qa, "em", (["train_rand_split.jsonl"], ["dev_rand_split.jsonl"])),
    "piqa": Task(parse_piqa, "acc", (["train.jsonl"], ["valid.jsonl"])),
    "hellaswag": Task(parse_hellaswag, "acc", (["hellaswag_train.jsonl"], ["hellaswag_val.jsonl"])),
    "lambada": Task(parse_lambada, "lambada", ([], ["lambada_test.jsonl"])),
    "webquestions": Task(parse_webquestions, "em", (["webquestions.examples.train.json"], ["webquestions.examples.test.json"])),
    "nq_open": Task(parse_nq_open, "em", (["NQ-open.train.jsonl"], ["NQ-open.dev.jsonl"])),
}
# The built-in tasks, drawn from the pretraining corpus's world (data.py): the prompt is written as
# in the corpus ("12+35=") and the answer follows with no space, ended by a newline.
BUILTIN = {f"world:{name}": Task(None, "exact", ((), ())) for name in sorted(WORLD_TASKS)}
# Hugging Face's split names, tried after the original file names; an evaluation split prefers
# validation/dev, since several tasks' test splits carry no labels.
HF_SPLITS = (["train"], ["validation", "dev", "valid", "val", "test"])
EXTENSIONS = ["", ".gz"], [".jsonl", ".json", ".jsonl.gz", ".json.gz"]


def get_task(name):
    name = TASK_ALIASES.get(name, name)  # csqa, commonsenseqa, nq, as data.py's download accepts
    if name in TASKS:
        return TASKS[name]
    if name in BUILTIN:
        return BUILTIN[name]
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list(TASKS) + list(BUILTIN))}")


def task_file(name, path, split):
    """The file of one split: `path` itself if it is a file, else the first of the usual names
    (original release, then Hugging Face's split names) in path/NAME/ or path/."""
    if os.path.isfile(path):
        return path
    name = TASK_ALIASES.get(name, name)
    if not os.path.isdir(path):
        raise ValueError(f"task data {path!r} not found; download it with `python prepare.py task {name} --out DIR` "
                         "and pass --data DIR")
    original = get_task(name).files[split == "test"]
    names = [n + gz for n in original for gz in EXTENSIONS[0]]
    names += [s + ext for s in HF_SPLITS[split == "test"] for ext in EXTENSIONS[1]]
    for folder in (os.path.join(path, name), path):
        for n in names:
            if os.path.isfile(os.path.join(folder, n)):
                return os.path.join(folder, n)
    raise ValueError(f"no {split} file for {name} in {path}/{name}/ or {path}/; looked for {names}"
                     + (" (LAMBADA has only a test split: pass a training file with --data FILE)" if name == "lambada" else ""))


def load_task(name, path=None, split="test", n=-1, seed=0):
    """Examples of a task's split ('train' or 'test', where 'test' is the evaluation split:
    validation/dev where the test labels are not public). Real tasks read `path` (a file, or a
    directory holding the usual file names); built-in 'world:*' tasks are generated (n examples)."""
    task, name = get_task(name), TASK_ALIASES.get(name, name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name in BUILTIN:
        examples = synthetic_task(name.split(":")[1], split, n if n > 0 else 1000, seed)
        return [{"prompt": e["prompt"], "target": e["answer"], "answers": [e["answer"]]} for e in examples]
    if not path:
        raise ValueError(f"task {name!r} needs its files: --data DIR (after `python prepare.py task {name} --out DIR`)")
    file = task_file(name, path, split)
    examples = task.parse(read_records(file), file)
    if not examples:
        raise ValueError(f"{file}: no examples found")
    return examples[:n] if n > 0 else examples
