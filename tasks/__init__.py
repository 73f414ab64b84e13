"""
The nine downstream tasks of the paper (Sec. 4) and the built-in world tasks: where their files come
from, how each file format becomes examples, and how a prediction is scored the way the benchmark's
official script scores it. Nothing in this file is about pauses: tasks/evaluate.py turns these
examples into rows with pauses and evaluates a model on them, for finetune.py.

    load_task(name, path, split, n, seed) -> a list of examples, each a dict:
        generation:      {"prompt", "target", "answers"}   target: the training continuation;
                                                           answers: the golds that score() takes
        multiple choice: {"prompt", "target", "choices", "label"}   choices: the continuations
                         (" " + text) scored by likelihood; target = choices[label]
        commonsense_qa has both, and "choice_letters" (" A" ... " E") for scoring by letter
    score(task, prediction, golds) -> {metric: value in [0, 1]} for one generated answer
    choose(logprobs, choices)      -> {"acc": index, "acc_norm": index} for one scored example
    answer_ids(tok, task, text), stop_ids(tok, task) -> an answer's tokens, and where decoding stops

Task.kind is "generate" (decode an answer, score it) or "choice" (pick by likelihood, choose);
Task.metric is the main key of score's (or choose's) dict, Task.source the script it follows.
"""
import gzip
import json
import math
import os
import random
import re
import string
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, replace

from data import WORLD_TASKS, synthetic_task
from tools.common import UserError, require

# -----------------------------------------------------------------------------------------------
# The tasks' original public files. load_task reads them from DIR/NAME/ under these names;
# `python -m tools.prepare task NAME --out DIR` downloads them.
GITHUB = "https://raw.githubusercontent.com/"
GSM8K_URL = GITHUB + "openai/grade-school-math/master/grade_school_math/data/"
NQ_URL = GITHUB + "google-research-datasets/natural-questions/master/nq_open/"
WEBQ_URL = ("https://nlp.stanford.edu/static/software/sempre/release-emnlp2013/lib/data/"
            "webquestions/dataset_11/")
TASK_FILES = {
    "gsm8k": {"train.jsonl": GSM8K_URL + "train.jsonl", "test.jsonl": GSM8K_URL + "test.jsonl"},
    "squad": {
        "train-v1.1.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
        "dev-v1.1.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json"},
    "coqa": {
        "coqa-train-v1.0.json": "https://nlp.stanford.edu/data/coqa/coqa-train-v1.0.json",
        "coqa-dev-v1.0.json": "https://nlp.stanford.edu/data/coqa/coqa-dev-v1.0.json"},
    "commonsense_qa": {
        "train_rand_split.jsonl": "https://s3.amazonaws.com/commensenseqa/train_rand_split.jsonl",
        "dev_rand_split.jsonl": "https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl"},
    "piqa": {name: "https://yonatanbisk.com/piqa/data/" + name for name in
             ("train.jsonl", "train-labels.lst", "valid.jsonl", "valid-labels.lst")},
    "hellaswag": {name: GITHUB + "rowanz/hellaswag/master/data/" + name for name in
                  ("hellaswag_train.jsonl", "hellaswag_val.jsonl")},
    "lambada": {"lambada_test.jsonl":
                "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"},
    # The Stanford release is bzip2-compressed; tools/prepare.py decompresses it after the download.
    "webquestions": {name: WEBQ_URL + name for name in ("webquestions.examples.train.json.bz2",
                                                        "webquestions.examples.test.json.bz2")},
    "nq_open": {name: NQ_URL + name for name in ("NQ-open.train.jsonl", "NQ-open.dev.jsonl")},
}
TASK_ALIASES = {"commonsenseqa": "commonsense_qa", "csqa": "commonsense_qa", "nq": "nq_open"}

# Prompt templates as evaluation harnesses write them; the answer follows after TARGET_DELIMITER.
QA_PROMPT = "Question: {question}\nAnswer:"
SQUAD_PROMPT = "Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\nAnswer:"
COQA_TURN = "Q: {question}\n\nA:"  # earlier turns come as "Q: ...\n\nA: ...\n\n" after the story
CSQA_PROMPT = "Question: {question}\n{choices}\nAnswer:"  # choices as "A. text" lines
TARGET_DELIMITER = " "  # lm-evaluation-harness's target_delimiter between prompt and answer


# -----------------------------------------------------------------------------------------------
# Reading records, shared by every task. Errors name the file, the line and the field.

def read_records(path):
    """[(where, record)] from a JSON file, a JSON Lines file, or either gzipped. `where` names the
    file and the line (JSON Lines) or the file (one JSON document), for error messages."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as UTF-8 text"
                         f"{' (gzip)' if path.endswith('.gz') else ''}: {e}") from None
    except (EOFError, zlib.error) as e:  # gzip's own words for a file cut short or damaged
        raise ValueError(f"{path}: a truncated or damaged gzip file ({e}); download it "
                         "again") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    if not re.search(r"\.jsonl(\.gz)?$", path):
        try:  # one JSON document (SQuAD, CoQA and WebQuestions originals) ...
            whole = json.loads(text)
            if isinstance(whole, list):
                return [(f"{path}, record {i}", r) for i, r in enumerate(whole)]
            return [(path, whole)]
        except json.JSONDecodeError:
            pass
    records = []  # ... or one JSON record a line
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((f"{path}, line {i}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {i}: not valid JSON ({e.msg}); expected one JSON "
                                 "record a line (JSON Lines) or one JSON document")
    return records


def field(record, key, where, task, kind=None):
    """record[key], or a ValueError that names the file, the line and the missing field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object (a {task} record), "
                         f"got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: field {key!r} is missing from this {task} record (it has "
                         f"{sorted(record)}); see the record format in tasks.py's {task} section")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{where}: field {key!r} of this {task} record should be a "
                         f"{getattr(kind, '__name__', 'list or dict')}, got {type(value).__name__}")
    return value


def strings(record, key, where, task):
    """record[key] as a list of strings, or a ValueError naming the item that is not one."""
    values = field(record, key, where, task, list)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key}[{i}] of this {task} record should be a string, "
                             f"got {type(value).__name__} {value!r:.40}")
    return values


def gen_example(prompt, answers, where):
    """A generation example. Every gold is kept, even an empty one, since the official scripts
    score against all of them; the training target is the first non-empty gold."""
    if not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: every gold answer should be a string, got {answers!r}")
    first = next((a for a in answers if a.strip()), None)
    if first is None:
        raise ValueError(f"{where}: no non-empty gold answer")
    return {"prompt": prompt, "target": TARGET_DELIMITER + first, "answers": list(answers)}


def choice_example(prompt, texts, label, where):
    """A multiple-choice example; each choice is scored as the continuation ' ' + text, the text
    exactly as the task's harness gives it (its length is what acc_norm divides by)."""
    if isinstance(label, str) and label.strip().isdigit():  # Hugging Face's "0", "1", ...
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int):  # 1.5 or true is not a number
        raise ValueError(f"{where}: label {label!r} is not a choice number (an unlabeled test "
                         "split? evaluate on the validation/dev file)")
    if not 0 <= label < len(texts):
        raise ValueError(f"{where}: label {label} is outside the {len(texts)} choices")
    choices = [TARGET_DELIMITER + t for t in texts]
    return {"prompt": prompt, "target": choices[label], "choices": choices, "label": label}


# SQuAD's answer normalization, shared by SQuAD, CoQA, CommonsenseQA (and, after NFD, NQ and
# WebQuestions): lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse spaces.
PUNCTUATION = set(string.punctuation)


def normalize_answer(s):
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def overlap_f1(prediction_tokens, gold_tokens):
    """Token-overlap F1; a token counts as often as it appears in both. 0 when nothing is shared."""
    same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# -----------------------------------------------------------------------------------------------
# GSM8K. Record: {"question", "answer": "steps with <<48/2=24>> calculator notes...\n#### 72"}.
# The whole solution is the training target, so the model learns to end with '#### n' and then
# the stop token (finetune.py adds <|endoftext|>, where decoding stops).
GSM8K_ANSWER = re.compile(r"#### (-?[0-9.,]+)")
FLEXIBLE_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def gsm8k_answer(text):
    """grade-school-math's extract_answer: the first '#### number', commas removed, as a string
    ('#### 5.00' stays '5.00', '#### $5' has none); None when there is none."""
    found = GSM8K_ANSWER.search(text)
    return found.group(1).replace(",", "") if found else None


def _lm_eval_clean(s):
    # lm-evaluation-harness gsm8k.yaml's exact_match: drop ',', '$', the text up to '#### ', one
    # final '.', then compare ignoring case.
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        s = re.sub(pattern, "", s)
    return s.lower()


def score_gsm8k(prediction, golds):
    # strict_match: grade-school-math dataset.py is_correct, first '#### n' equal as strings.
    # (lm-evaluation-harness's 'strict-match' is the same rule but forgives one final '.'.)
    # flexible_extract: lm-evaluation-harness gsm8k.yaml 'flexible-extract', the LAST number-like
    # match; reported beside the official rule, never instead of it.
    gold = gsm8k_answer(golds[0])
    if gold is None:
        raise ValueError(f"a GSM8K gold solution ends with '#### <number>'; got {golds[0][-40:]!r}")
    found = FLEXIBLE_NUMBER.findall(prediction)
    last = next(g for g in found[-1] if g).strip() if found else "[invalid]"
    return {"strict_match": float(gsm8k_answer(prediction) == gold),
            "flexible_extract": float(_lm_eval_clean(last) == _lm_eval_clean(golds[0]))}


def parse_gsm8k(records, path):
    out = []
    for where, r in records:
        question = field(r, "question", where, "GSM8K", str)
        answer = field(r, "answer", where, "GSM8K", str)
        found = GSM8K_ANSWER.search(answer)
        if found is None or answer[found.end():].strip():
            raise ValueError(f"{where}: a GSM8K answer ends with '#### <number>' (the number the "
                             f"official script reads); this one ends {answer[-40:]!r}")
        out.append(gen_example(QA_PROMPT.format(question=question), [answer], where))
    return out


# -----------------------------------------------------------------------------------------------
# SQuAD v1.1. Original: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
# "answers": [{"text", "answer_start"}]}]}]}]}; Hugging Face's flat layout: one question a record,
# {"title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}.

def score_squad(prediction, golds):
    # SQuAD evaluate-v1.1.py: EM and token F1, each the maximum over the golds.
    # F1 is 0 whenever no token is shared, so an empty answer scores 0 (no empty-agrees rule).
    p = normalize_answer(prediction)
    return {"em": max(float(p == normalize_answer(g)) for g in golds),
            "f1": max(overlap_f1(p.split(), normalize_answer(g).split()) for g in golds)}


def parse_squad(records, path):
    out = []
    for where, r in records:
        if not (isinstance(r, dict) and "data" in r):  # the flat layout
            answers = field(r, "answers", where, "SQuAD", dict)
            title = field(r, "title", where, "SQuAD", str) if "title" in r else ""
            prompt = SQUAD_PROMPT.format(title=title,
                                         context=field(r, "context", where, "SQuAD", str),
                                         question=field(r, "question", where, "SQuAD", str))
            golds = strings(answers, "text", where + ", answers", "SQuAD")
            out.append(gen_example(prompt, golds, where))
            continue
        for i, article in enumerate(field(r, "data", where, "SQuAD", list)):
            w_article = f"{where}, data[{i}]"
            title = field(article, "title", w_article, "SQuAD", str)
            for j, para in enumerate(field(article, "paragraphs", w_article, "SQuAD", list)):
                w_para = f"{w_article}.paragraphs[{j}]"
                context = field(para, "context", w_para, "SQuAD", str)
                for k, qa in enumerate(field(para, "qas", w_para, "SQuAD", list)):
                    w = f"{w_para}.qas[{k}]"
                    golds = [field(a, "text", w + ".answers", "SQuAD", str)
                             for a in field(qa, "answers", w, "SQuAD", list)]
                    prompt = SQUAD_PROMPT.format(title=title, context=context,
                                                 question=field(qa, "question", w, "SQuAD",
                                                                str))
                    out.append(gen_example(prompt, golds, w + " (SQuAD v2's unanswerable "
                                                              "questions are not supported)"))
    return out


# -----------------------------------------------------------------------------------------------
# CoQA. Original: {"data": [{"id", "story", "questions": [{"turn_id", "input_text"}], "answers":
# [{"turn_id", "input_text", ...}], "additional_answers" (dev only): {"0": [answers], ...}}]};
# Hugging Face's flat layout: {"story", "questions": [str], "answers": {"input_text": [str]}},
# one gold a turn. An example's answers are all golds of its turn: the answer, then the others.

def _coqa_f1(prediction_tokens, gold_tokens):
    if not prediction_tokens or not gold_tokens:  # CoQA's rule: two empty answers agree
        return float(prediction_tokens == gold_tokens)
    return overlap_f1(prediction_tokens, gold_tokens)


def score_coqa(prediction, golds):
    # CoQA evaluate-v1.0.py: EM and F1 averaged over leaving each gold out, of the best score
    # against the others; one gold: against it. (lm-evaluation-harness's coqa first drops
    # repeated golds, which changes the average: the official script keeps them.)
    p = normalize_answer(prediction)
    em = [float(p == normalize_answer(g)) for g in golds]
    f1 = [_coqa_f1(p.split(), normalize_answer(g).split()) for g in golds]
    if len(golds) == 1:
        return {"em": em[0], "f1": f1[0]}
    n = len(golds)
    return {"em": sum(max(em[:i] + em[i + 1:]) for i in range(n)) / n,
            "f1": sum(max(f1[:i] + f1[i + 1:]) for i in range(n)) / n}


def parse_coqa(records, path):
    stories = [(f"{w}, data[{i}]", s) for w, r in records if isinstance(r, dict) and "data" in r
               for i, s in enumerate(field(r, "data", w, "CoQA", list))] or records
    out = []
    for where, s in stories:
        story = field(s, "story", where, "CoQA", str)
        questions = field(s, "questions", where, "CoQA", list)
        answers = field(s, "answers", where, "CoQA", (list, dict))
        if isinstance(answers, dict):  # flat: the questions as strings, one gold a turn
            texts = strings(answers, "input_text", where + ", answers", "CoQA")
            strings(s, "questions", where, "CoQA")
            if len(texts) != len(questions):
                raise ValueError(f"{where}: {len(questions)} questions but {len(texts)} answers")
            turns = [(q, [a]) for q, a in zip(questions, texts)]
        else:  # original: the answer, then each annotator's additional answer of the same turn
            lists = [answers] + list(s.get("additional_answers", {}).values())
            if any(len(x) != len(questions) for x in lists):
                raise ValueError(f"{where}: {len(questions)} questions but answer lists of "
                                 f"lengths {[len(x) for x in lists]}")
            turns = [(field(q, "input_text", f"{where}, turn {t + 1}", "CoQA", str),
                      [field(x[t], "input_text", f"{where}, turn {t + 1}", "CoQA", str)
                       for x in lists])
                     for t, q in enumerate(questions)]
        history = story + "\n\n"  # each turn's prompt holds the story and every earlier turn
        for t, (q, golds) in enumerate(turns):
            out.append(gen_example(history + COQA_TURN.format(question=q), golds,
                                   f"{where}, turn {t + 1}"))
            history += COQA_TURN.format(question=q) + " " + golds[0] + "\n\n"
    return out


# -----------------------------------------------------------------------------------------------
# CommonsenseQA. Original: {"question": {"stem", "choices": [{"label", "text"}]}, "answerKey"};
# Hugging Face: {"question": str, "choices": {"label": [...], "text": [...]}, "answerKey"}.
# As the paper does, the model decodes the answer text. Scored by likelihood instead (finetune.py
# --score_choices), the continuations are the letters, as lm-evaluation-harness's commonsense_qa
# does: example["choice_letters"] (" A" ... " E"); see CSQA_LETTERS and as_letters.

def score_commonsense_qa(prediction, golds):
    # The paper's exact match of the decoded answer; it names no script: SQuAD's normalization.
    p = normalize_answer(prediction)
    return {"em": max(float(p == normalize_answer(g)) for g in golds)}


def parse_commonsense_qa(records, path):
    out = []
    for where, r in records:
        q = field(r, "question", where, "CommonsenseQA")
        if isinstance(q, dict):  # original
            stem = field(q, "stem", where + ", question", "CommonsenseQA", str)
            choices = field(q, "choices", where + ", question", "CommonsenseQA", list)
            at = [f"{where}, question.choices[{i}]" for i in range(len(choices))]
            labels = [field(c, "label", w, "CommonsenseQA", str) for c, w in zip(choices, at)]
            texts = [field(c, "text", w, "CommonsenseQA", str) for c, w in zip(choices, at)]
        else:  # Hugging Face
            choices = field(r, "choices", where, "CommonsenseQA", dict)
            stem = field(r, "question", where, "CommonsenseQA", str)
            labels = strings(choices, "label", where + ", choices", "CommonsenseQA")
            texts = strings(choices, "text", where + ", choices", "CommonsenseQA")
            if len(labels) != len(texts):
                raise ValueError(f"{where}: {len(labels)} choice labels but {len(texts)} texts")
        key = field(r, "answerKey", where, "CommonsenseQA", str)
        if key not in labels:
            raise ValueError(f"{where}: answerKey {key!r} is not one of the choice labels {labels} "
                             "(an unlabeled test split? evaluate on the dev/validation file)")
        lines = "\n".join(f"{lab}. {text}" for lab, text in zip(labels, texts))
        prompt = CSQA_PROMPT.format(question=stem.strip(), choices=lines)
        ex = choice_example(prompt, texts, labels.index(key), where)
        ex["answers"] = [texts[ex["label"]]]
        ex["choice_letters"] = [TARGET_DELIMITER + lab for lab in labels]
        out.append(ex)
    return out


# -----------------------------------------------------------------------------------------------
# PIQA and HellaSwag, scored by likelihood. PIQA original: {"goal", "sol1", "sol2"} with the
# labels one a line in NAME-labels.lst beside it; Hugging Face adds "label". HellaSwag: {"ctx_a",
# "ctx_b", "activity_label", "endings": [4], "label"} (a string on Hugging Face).

def _argmax(values):
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima


def choose(logprobs, choices):
    """The choices picked as lm-evaluation-harness's multiple_choice picks them, given each
    continuation's summed log-probability: acc by the sum; acc_norm by the sum divided by the
    length in characters of the choice text as doc_to_choice gives it, i.e. without the ' ' the
    harness puts before each continuation. Ties go to the first choice, as numpy.argmax."""
    if not choices or len(logprobs) != len(choices):
        raise ValueError(f"{len(logprobs)} log-probabilities for {len(choices)} choices")
    lengths = [len(c.removeprefix(TARGET_DELIMITER)) for c in choices]
    # numpy divides a negative sum by an empty text's length 0 into -inf: never picked.
    norm = [lp / n if n else -math.inf for lp, n in zip(logprobs, lengths)]
    return {"acc": _argmax(list(logprobs)), "acc_norm": _argmax(norm)}


def parse_piqa(records, path):
    labels = None
    if records and isinstance(records[0][1], dict) and "label" not in records[0][1]:
        # The original release keeps the labels beside the data: train.jsonl + train-labels.lst.
        lst = re.sub(r"\.jsonl?(\.gz)?$", "", path) + "-labels.lst"
        if not os.path.exists(lst):
            raise ValueError(f"{path}: PIQA records carry no 'label', and the labels file {lst} "
                             "(one 0/1 a line, from the original release) is missing")
        with open(lst, encoding="utf-8") as f:
            labels = [(f"{lst}, line {i}", line.strip()) for i, line in enumerate(f, 1)
                      if line.strip()]
        if len(labels) != len(records):
            raise ValueError(f"{lst} has {len(labels)} labels but {path} has "
                             f"{len(records)} records")
    out = []
    for i, (where, r) in enumerate(records):
        goal = field(r, "goal", where, "PIQA", str)
        sols = [field(r, k, where, "PIQA", str) for k in ("sol1", "sol2")]
        label_where, label = labels[i] if labels else (where, field(r, "label", where, "PIQA"))
        out.append(choice_example(QA_PROMPT.format(question=goal), sols, label, label_where))
    return out


def _hellaswag_clean(text):
    # lm-evaluation-harness's hellaswag preprocess: WikiHow markup ' [title]' becomes '. ', other
    # [tags] go, double spaces become one.
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def parse_hellaswag(records, path):
    out = []
    for where, r in records:
        ctx = (field(r, "ctx_a", where, "HellaSwag", str) + " "
               + field(r, "ctx_b", where, "HellaSwag", str).capitalize())
        label = field(r, "activity_label", where, "HellaSwag", str)
        endings = [_hellaswag_clean(e) for e in strings(r, "endings", where, "HellaSwag")]
        out.append(choice_example(_hellaswag_clean(label + ": " + ctx), endings,
                                  field(r, "label", where, "HellaSwag"), where))
    return out


# -----------------------------------------------------------------------------------------------
# LAMBADA (OpenAI's version, {"text"} one passage a line): the prompt is the passage up to its
# last space, the gold the word after it, the target ' ' + word (lm-evaluation-harness's split).

def score_lambada(prediction, golds):
    # lm-evaluation-harness lambada_openai 'acc': greedy decoding reproduces ' ' + last word.
    # finetune.py decodes as many tokens as the target has and passes their text, so
    # punctuation, quotes, apostrophes and case all count (unlike a first-word rule).
    return {"acc": float(prediction == TARGET_DELIMITER + golds[0])}


def parse_lambada(records, path):
    out = []
    for where, r in records:
        text = field(r, "text", where, "LAMBADA", str)
        cut = text.rfind(" ")
        if cut <= 0 or not text[cut + 1:].strip():
            raise ValueError(f"{where}: a LAMBADA passage is several words, the target being the "
                             f"text after the last space; this one ends {text[-40:]!r}")
        out.append(gen_example(text[:cut], [text[cut + 1:]], where))
    return out


# -----------------------------------------------------------------------------------------------
# WebQuestions and NaturalQuestions (open). WebQuestions original: {"utterance", "targetValue":
# "(list (description X) ...)"}; Hugging Face: {"question", "answers": [...]}. NQ-open:
# {"question", "answer": [...]}.

def score_open_qa(prediction, golds):
    # ORQA orqa/utils/eval_utils.py: exact match after Unicode NFD + SQuAD's normalization, max
    # over the golds.
    p = normalize_answer(unicodedata.normalize("NFD", prediction))
    return {"em": max(float(p == normalize_answer(unicodedata.normalize("NFD", g)))
                      for g in golds)}


WEBQ_DESCRIPTION = re.compile(r'\(description (?:"((?:[^"\\]|\\.)*)"|([^()]*))\)')


def parse_webquestions(records, path):
    out = []
    for where, r in records:
        if isinstance(r, dict) and "targetValue" in r:  # original
            target = field(r, "targetValue", where, "WebQuestions", str)
            answers = [a or b for a, b in WEBQ_DESCRIPTION.findall(target)]
            question = field(r, "utterance", where, "WebQuestions", str)
        else:  # Hugging Face
            question = field(r, "question", where, "WebQuestions", str)
            answers = field(r, "answers", where, "WebQuestions", list)
        out.append(gen_example(QA_PROMPT.format(question=question), answers, where))
    return out


def parse_nq_open(records, path):
    return [gen_example(QA_PROMPT.format(question=field(r, "question", w, "NaturalQuestions", str)),
                        field(r, "answer", w, "NaturalQuestions", list), w) for w, r in records]


# -----------------------------------------------------------------------------------------------
# The built-in world tasks, drawn from the pretraining corpus's world (data.py): the prompt is
# written as in the corpus ("12+35=") and the answer follows with no space, ended by a newline.

def score_exact(prediction, golds):
    # The built-in tasks' own rule: the prediction, stripped, is one of the golds.
    return {"exact": float(prediction.strip() in [g.strip() for g in golds])}


# -----------------------------------------------------------------------------------------------
# The registry, scoring and loading.

@dataclass(frozen=True)
class Task:
    parse: object         # (records, path) -> examples
    metric: str           # the main key of score's dict (choose's for a choice task)
    files: tuple          # (train file names, evaluation file names) of the original release
    stop: str = "newline"  # at a newline; "eot": at <|endoftext|> only; "length": see answer_ids
    source: str = ""      # the official script the metric follows
    scorer: object = None  # (prediction, golds) -> dict; None: a choice task, scored by choose()
    kind: str = "generate"  # "generate": decode, then score(); "choice": choose() by likelihood

    def __post_init__(self):
        assert (self.kind == "choice") == (self.scorer is None), self.kind


LM_EVAL = "lm-evaluation-harness "
TASKS = {
    "gsm8k": Task(parse_gsm8k, "strict_match", (["train.jsonl"], ["test.jsonl"]), stop="eot",
                  source="grade-school-math dataset.py extract_answer", scorer=score_gsm8k),
    "squad": Task(parse_squad, "em", (["train-v1.1.json"], ["dev-v1.1.json"]),
                  source="SQuAD evaluate-v1.1.py", scorer=score_squad),
    "coqa": Task(parse_coqa, "f1", (["coqa-train-v1.0.json"], ["coqa-dev-v1.0.json"]),
                 source="CoQA evaluate-v1.0.py", scorer=score_coqa),
    "commonsense_qa": Task(parse_commonsense_qa, "em", (["train_rand_split.jsonl"],
                                                        ["dev_rand_split.jsonl"]),
                           source="exact match of the decoded answer (SQuAD normalization)",
                           scorer=score_commonsense_qa),
    "piqa": Task(parse_piqa, "acc", (["train.jsonl"], ["valid.jsonl"]), source=LM_EVAL + "piqa",
                 kind="choice"),
    "hellaswag": Task(parse_hellaswag, "acc", (["hellaswag_train.jsonl"], ["hellaswag_val.jsonl"]),
                      source=LM_EVAL + "hellaswag", kind="choice"),
    "lambada": Task(parse_lambada, "acc", ([], ["lambada_test.jsonl"]), stop="length",
                    source=LM_EVAL + "lambada_openai", scorer=score_lambada),
    "webquestions": Task(parse_webquestions, "em", (["webquestions.examples.train.json"],
                                                    ["webquestions.examples.test.json"]),
                         source="ORQA orqa/utils/eval_utils.py", scorer=score_open_qa),
    "nq_open": Task(parse_nq_open, "em", (["NQ-open.train.jsonl"], ["NQ-open.dev.jsonl"]),
                    source="ORQA orqa/utils/eval_utils.py", scorer=score_open_qa),
}
BUILTIN = {f"world:{name}": Task(None, "exact", ((), ()), source="exact string match",
                                 scorer=score_exact) for name in sorted(WORLD_TASKS)}
# commonsense_qa scored by likelihood (finetune.py --score_choices), as lm-evaluation-harness's
# commonsense_qa scores it: the continuations are the letters " A" ... " E", trained and scored.
CSQA_LETTERS = replace(TASKS["commonsense_qa"], metric="acc", scorer=None, kind="choice",
                       source=LM_EVAL + "commonsense_qa (the letters A-E, scored)")
# Hugging Face's split names, tried after the original file names; an evaluation split prefers
# validation/dev, since several tasks' test splits carry no labels.
HF_SPLITS = (["train"], ["validation", "dev", "valid", "val", "test"])
EXTENSIONS = ["", ".gz"], [".jsonl", ".json", ".jsonl.gz", ".json.gz"]


def as_letters(examples):
    """commonsense_qa's examples as CSQA_LETTERS takes them: the letters are choices and target."""
    return [{**e, "choices": e["choice_letters"], "target": e["choice_letters"][e["label"]]}
            for e in examples]


def get_task(name):
    name = TASK_ALIASES.get(name, name)  # csqa, commonsenseqa, nq, as tools/prepare.py accepts
    if name in TASKS:
        return TASKS[name]
    if name in BUILTIN:
        return BUILTIN[name]
    known = ", ".join(list(TASKS) + list(BUILTIN))
    raise ValueError(f"unknown task {name!r}; known tasks: {known}")


def score(task, prediction, golds):
    """Every metric the task's official script reports for one generated answer, each in [0, 1].
    task: a Task or its name; golds: the example's 'answers'."""
    task = get_task(task) if isinstance(task, str) else task
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers to compare with")
    if task.kind == "choice":
        raise ValueError(f"{task.source} is multiple choice: pick with choose(logprobs, choices)")
    return task.scorer(prediction, golds)


def task_file(name, path, split):
    """The file of one split: `path` itself if it is a file, else the first of the usual names
    (original release, then Hugging Face's split names) in path/NAME/ or path/."""
    if os.path.isfile(path):
        return path
    name = TASK_ALIASES.get(name, name)
    if not os.path.isdir(path):
        raise ValueError(f"task data {path!r} not found; download it with "
                         f"`python -m tools.prepare task {name} --out DIR` and pass --data DIR")
    original = get_task(name).files[split == "test"]
    names = [n + gz for n in original for gz in EXTENSIONS[0]]
    names += [s + ext for s in HF_SPLITS[split == "test"] for ext in EXTENSIONS[1]]
    for folder in (os.path.join(path, name), path):
        for n in names:
            if os.path.isfile(os.path.join(folder, n)):
                return os.path.join(folder, n)
    hint = " (LAMBADA has only a test split: pass a training file with --data FILE)"
    raise ValueError(f"no {split} file for {name} in {path}/{name}/ or {path}/; looked for {names}"
                     + (hint if name == "lambada" else ""))


def check_data(name, data, eval_data, train=True):
    """A UserError naming the flag when finetune.py's --data (a DIR, or the training FILE) and
    --eval_data do not fit task `name`. train: whether the run finetunes; an evaluation-only run
    needs the evaluation split alone. The evaluation file is never the training file, however
    its path is spelled (relative, absolute, through a symlink)."""
    if name in BUILTIN:
        require(not (data or eval_data), f"--data and --eval_data are for the real tasks; "
                f"{name} is generated")
        return
    require(data or (eval_data and not train), f"--task {name} needs --data DIR (after "
            f"`python -m tools.prepare task {name} --out DIR`), or --data FILE --eval_data "
            "FILE; an evaluation-only run (--max_steps 0) needs only --eval_data FILE")
    require(eval_data or not os.path.isfile(data), f"--data {data} is a file, the training "
            "split: give the evaluation split with --eval_data FILE")
    require(not eval_data or os.path.exists(eval_data), f"--eval_data {eval_data} does not "
            "exist")
    if not train:
        return
    try:
        train_file = task_file(name, data, "train")
    except ValueError as e:
        raise UserError(str(e)) from None
    same = eval_data and os.path.isfile(eval_data) and os.path.samefile(train_file, eval_data)
    require(not same, f"--eval_data {eval_data} is the training file ({train_file}); a model "
            "is never scored on the examples it was finetuned on")


def shared_examples(train, evaluation):
    """How many evaluation examples are also training examples, prompt and answer alike (a copy
    of the training file under another name shares all of them)."""
    seen = {(e["prompt"], e["target"]) for e in train}
    return sum((e["prompt"], e["target"]) in seen for e in evaluation)


def load_task(name, path=None, split="test", n=-1, seed=0):
    """Examples of a task's split ('train' or 'test', where 'test' is the evaluation split:
    validation/dev where the test labels are not public). Real tasks read `path` (a file, or a
    directory holding the usual file names); n = -1 takes the whole split, n > 0 a random subset
    of n drawn with `seed` (kept in file order). Built-in 'world:*' tasks generate n examples
    (1000 for -1)."""
    task, name = get_task(name), TASK_ALIASES.get(name, name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n == 0 or n < -1:
        raise ValueError(f"the number of examples is -1 (the whole split) or positive, got {n}")
    if name in BUILTIN:
        examples = synthetic_task(name.split(":")[1], split, n if n > 0 else 1000, seed)
        return [{"prompt": e["prompt"], "target": e["answer"], "answers": [e["answer"]]}
                for e in examples]
    if not path:
        raise ValueError(f"task {name!r} needs its files: --data DIR "
                         f"(after `python -m tools.prepare task {name} --out DIR`)")
    file = task_file(name, path, split)
    examples = task.parse(read_records(file), file)
    if not examples:
        raise ValueError(f"{file}: no examples found")
    if n > len(examples):
        raise ValueError(f"{file}: {n} examples asked for, but the split has {len(examples)}; "
                         "pass -1 for the whole split")
    if 0 < n < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), n))
        examples = [examples[i] for i in keep]
    return examples


# -----------------------------------------------------------------------------------------------
# Answers in tokens. A training answer ends with the token where decoding stops, so finetuning
# teaches the model to stop: <|endoftext|> after GSM8K's many-line solutions, else a newline.
# LAMBADA's answers end in a newline too, but its decoding stops by length: as many tokens as the
# target has, their text compared whole (lm-evaluation-harness's greedy check).

def answer_ids(tok, task, text):
    """The answer's tokens, then its stop token."""
    return tok.encode(text) + ([tok.eot_id] if task.stop == "eot" else tok.encode("\n"))


def stop_ids(tok, task):
    """The ids that end decoding: <|endoftext|>, and for one-line answers every token that holds
    a newline; none when decoding stops by length."""
    if task.stop == "length":
        return set()
    if task.stop == "eot":
        return {tok.eot_id}
    return {tok.eot_id} | {i for i in range(tok.eot_id)
                           if b"\n" in tok.enc.decode_single_token_bytes(i)}
