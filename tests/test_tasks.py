"""The tasks' metrics against cases worked by hand from each official script's rules, the loaders
on small fixture files written here in each real format (original release and Hugging Face's flat
layout where they differ), and bad input."""
import gzip
import json

import pytest

from data import get_tokenizer
import tasks
from tasks import (BUILTIN, CSQA_LETTERS, TASK_FILES, TASKS, answer_ids, as_letters, choose,
                   get_task, load_task, normalize_answer, score, stop_ids, task_file)


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------------------------
# Metrics, by hand.

def test_squad_normalization():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("the theater") == "theater"  # articles are whole words only
    assert normalize_answer("  Zürich\t(CH)  ") == "zürich ch"  # ASCII punctuation goes
    assert normalize_answer("“quoted”") == "“quoted”"  # other punctuation stays


def test_squad_v11_em_and_f1():
    assert score("squad", "the Eiffel Tower.", ["Eiffel tower", "Paris"]) == {"em": 1.0, "f1": 1.0}
    assert score("squad", "Eiffel", ["Eiffel tower", "Paris"])["em"] == 0.0
    # pred {cat, sat}, gold {cat, sat, on, mat}: precision 1, recall 1/2 -> F1 2/3
    assert score("squad", "the cat sat", ["cat sat on the mat"])["f1"] == pytest.approx(2 / 3)
    assert score("squad", "blue", ["red house", "blue car"])["f1"] == pytest.approx(2 / 3)  # max
    assert score("squad", "x y", ["y z", "y z"])["f1"] == pytest.approx(0.5)
    # repeated tokens count at most as often as in both: common {x:1, y:1} -> P = R = 2/3
    assert score("squad", "x x y", ["x y y"])["f1"] == pytest.approx(2 / 3)
    # v1.1's empty rule: F1 is 0 when either side normalizes to nothing (no 'both empty' 1.0);
    # EM compares the normalized strings, so '' equals ''.
    assert score("squad", "the", ["a"]) == {"em": 1.0, "f1": 0.0}
    assert score("squad", "", ["cat"]) == {"em": 0.0, "f1": 0.0}
    assert score("squad", "cat", ["an"]) == {"em": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="no gold"):
        score("squad", "x", [])


def test_coqa_leave_one_out_over_golds():
    # normalized golds: 'in barn', 'in barn', 'barn', 'barn near farm house'; F1 against each:
    # 2/3, 2/3, 1, 2/5. Leaving each out, the best of the rest: 1, 1, 2/3, 1 -> mean 11/12.
    got = score("coqa", "barn", ["in a barn", "in a barn", "barn", "a barn near a farm house"])
    assert got["f1"] == pytest.approx(11 / 12) and got["f1"] == pytest.approx(0.917, abs=5e-4)
    assert got["em"] == pytest.approx(0.75)  # EM 1 unless 'barn' itself is left out
    assert score("coqa", "x", ["x", "y"]) == {"em": 0.5, "f1": 0.5}
    assert score("coqa", "x", ["x", "x"]) == {"em": 1.0, "f1": 1.0}
    # one gold: the score against it; CoQA's empty rule (not SQuAD v1.1's): empty agrees with empty
    assert score("coqa", "the cat", ["cat"]) == {"em": 1.0, "f1": 1.0}
    assert score("coqa", "the", ["a"]) == {"em": 1.0, "f1": 1.0}
    assert score("coqa", "", ["cat"]) == {"em": 0.0, "f1": 0.0}
    # an empty gold is a gold: leaving 'white' out leaves only '' -> 0; leaving '' out -> 1
    assert score("coqa", "white", ["white", ""]) == {"em": 0.5, "f1": 0.5}


GOLD_5, GOLD_1000 = "2+3 = <<2+3=5>>5\n#### 5", "10*100 = <<10*100=1000>>1000\n#### 1,000"


@pytest.mark.parametrize("prediction, gold, strict, flexible", [
    ("#### 5 dollars for 2 kids", GOLD_5, 1, 0),     # first '#### number'; flexible takes the last
    ("#### 5.00", GOLD_5, 0, 0),                      # compared as strings, not as numbers
    ("#### $5", GOLD_5, 0, 1),                        # '$' is no number; flexible drops it
    ("#### 1,000", GOLD_1000, 1, 1),                  # commas removed on both sides
    ("#### 1000", GOLD_1000, 1, 1),
    ("#### 5\nThat is 3 more than 2.", GOLD_5, 1, 0),  # a number after the answer
    ("so she has 5 apples", GOLD_5, 0, 1),             # no '####' at all
    ("I do not know", GOLD_5, 0, 0),
    ("#### 5.", GOLD_5, 0, 1),                        # the harness forgives one final '.'
    ("#### 4 #### 5", GOLD_5, 0, 1),                  # the first match counts
    ("#### -3", "#### -3", 1, 1),
])
def test_gsm8k_official_rule_and_flexible(prediction, gold, strict, flexible):
    assert score("gsm8k", prediction, [gold]) == {"strict_match": strict,
                                                  "flexible_extract": flexible}


def test_lambada_whole_target_as_lm_eval():
    # The prediction is the text of exactly as many greedy tokens as ' ' + word has.
    assert score("lambada", " dancer", ["dancer"]) == {"acc": 1.0}
    for miss in ("dancer", " Dancer", " dancer.", " dance", ""):
        assert score("lambada", miss, ["dancer"]) == {"acc": 0.0}, miss
    # apostrophes and quotes are part of the word (a first-word rule stripping punctuation differs)
    assert score("lambada", " Jenkins'", ["Jenkins'"])["acc"] == 1.0
    assert score("lambada", " Jenkins", ["Jenkins'"])["acc"] == 0.0
    assert score("lambada", " don’t", ["don't"])["acc"] == 0.0  # a curly apostrophe differs
    assert score("lambada", ' "run"', ['"run"'])["acc"] == 1.0
    assert score("lambada", " run", ['"run"'])["acc"] == 0.0


def test_open_qa_nfd_before_squad_normalization():
    composed, decomposed = "Z\u00fcrich", "Zu\u0308rich"
    for task in ("nq_open", "webquestions"):
        assert score(task, composed, ["Geneva", decomposed]) == {"em": 1.0}
        assert score(task, "the Zurich.", [composed]) == {"em": 0.0}  # NFD keeps the diaeresis
        assert score(task, "The Fernie", ["Fernie Alpine Resort", "fernie"]) == {"em": 1.0}
    assert score("squad", composed, [decomposed])["em"] == 0.0  # SQuAD's own script has no NFD


def test_commonsense_qa_and_world_scores():
    assert score("commonsense_qa", "The bank.", ["bank"]) == {"em": 1.0}
    assert score("commonsense_qa", "banks", ["bank"]) == {"em": 0.0}
    assert score("world:add", "47 ", ["47"]) == {"exact": 1.0}
    assert score("world:add", "470", ["47"]) == {"exact": 0.0}


def test_every_generation_task_reports_its_main_metric():
    for name, task in {**TASKS, **BUILTIN}.items():
        assert task.source, name
        if task.scorer is None:  # scored by likelihood
            assert task.metric in choose([-1.0, -2.0], [" a", " b"]), name
            with pytest.raises(ValueError, match="choose"):
                score(name, "x", ["x"])
            continue
        gold = "#### 7" if name == "gsm8k" else "seven"
        right = "#### 7" if name == "gsm8k" else (" seven" if name == "lambada" else "seven")
        assert score(task, right, [gold])[task.metric] == 1.0, name
        assert score(name, "#### 8 eight", [gold])[task.metric] == 0.0, name
        assert all(0.0 <= v <= 1.0 for v in score(name, "seven 7", [gold]).values())


def test_choose_acc_and_acc_norm_as_lm_eval():
    choices = [" Use rock salt.", " Use paper bedding."]  # texts of 14 and 18 characters
    # acc: the larger sum. acc_norm: -7/14 = -0.5 < -8.95/18 = -0.497 -> choice 1; dividing by
    # the lengths with the leading space instead (15, 19) would give -0.467 > -0.471 -> choice 0.
    assert choose([-7.0, -8.95], choices) == {"acc": 0, "acc_norm": 1}
    assert choose([-7.0, -9.05], choices) == {"acc": 0, "acc_norm": 0}  # -0.5 > -0.503
    assert choose([-7.0, -8.95], ["Use rock salt.", "Use paper bedding."])["acc_norm"] == 1
    # ties go to the first choice, as numpy.argmax
    assert choose([-3.0, -3.0], [" ab", " cd"]) == {"acc": 0, "acc_norm": 0}
    assert choose([-4.0, -2.0], [" abcd", " ab"]) == {"acc": 1, "acc_norm": 0}
    assert choose([-2.0, -5.0], [" x", " "]) == {"acc": 0, "acc_norm": 0}  # empty text: never
    with pytest.raises(ValueError, match="2 log-probabilities for 3 choices"):
        choose([-1.0, -2.0], [" a", " b", " c"])


# ----------------------------------------------------------------------------------------------
# Loaders: each real format, both layouts.

GSM = [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"},
       {"question": "A debt of 1,000 dollars grows by 200. How much?",
        "answer": "1000+200=1200\n#### 1,200"}]


@pytest.mark.parametrize("name", ["test.jsonl", "test.jsonl.gz"])
def test_gsm8k(tmp_path, name):
    path = write_jsonl(tmp_path / "gsm8k" / name, GSM, gz=name.endswith(".gz"))
    for p in (path, str(tmp_path)):  # the file itself, or DIR holding gsm8k/
        ex = load_task("gsm8k", p, "test")
        assert len(ex) == 2
        assert ex[0]["prompt"] == "Question: " + GSM[0]["question"] + "\nAnswer:"
        # the training target is the whole solution, ending with '#### n' (the stop token follows)
        assert ex[0]["target"] == " " + GSM[0]["answer"] and ex[0]["target"].endswith("#### 72")
        assert score("gsm8k", "so #### 72", ex[0]["answers"])["strict_match"] == 1.0
        assert score("gsm8k", "#### 1200", ex[1]["answers"])["strict_match"] == 1.0
    bad = [{**GSM[0], "answer": GSM[0]["answer"] + "\nSo 72 clips."}]  # text after the answer
    with pytest.raises(ValueError, match=r"g\.jsonl, line 1: a GSM8K answer ends with '####"):
        load_task("gsm8k", write_jsonl(tmp_path / "g.jsonl", bad))


SQUAD_CONTEXT = ("Normandy is a region in France. Its capital, Rouen, lies on the Seine; "
                 "Zürich does not.")


def test_squad_original_and_flat_agree(tmp_path):
    original = {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [
        {"context": SQUAD_CONTEXT, "qas": [
            {"id": "q1", "question": "In what country is Normandy?",
             "answers": [{"text": "France", "answer_start": 24},
                         {"text": "France", "answer_start": 24},
                         {"text": "in France", "answer_start": 21}]},
            {"id": "q2", "question": "Which city is not in Normandy?",
             "answers": [{"text": "Zürich", "answer_start": 70}]}]}]}]}
    flat = [{"id": "q1", "title": "Normans", "context": SQUAD_CONTEXT,
             "question": "In what country is Normandy?",
             "answers": {"text": ["France", "France", "in France"], "answer_start": [24, 24, 21]}},
            {"id": "q2", "title": "Normans", "context": SQUAD_CONTEXT,
             "question": "Which city is not in Normandy?",
             "answers": {"text": ["Zürich"], "answer_start": [70]}}]
    a = load_task("squad", write_json(tmp_path / "orig" / "squad" / "dev-v1.1.json", original))
    b = load_task("squad", write_jsonl(tmp_path / "hf" / "squad" / "validation.jsonl", flat))
    assert a == b and len(a) == 2
    assert a[0]["prompt"] == ("Title: Normans\n\nBackground: " + SQUAD_CONTEXT +
                              "\n\nQuestion: In what country is Normandy?\n\nAnswer:")
    assert a[0]["answers"] == ["France", "France", "in France"] and a[0]["target"] == " France"
    assert a[1]["answers"] == ["Zürich"]
    assert load_task("squad", str(tmp_path / "orig"), "test") == a  # found by name in DIR/squad/


COQA_STORY = ("Once upon a time, in a barn near a farm house, there lived a little white kitten "
              "named Cotton 🐱.")
COQA_QUESTIONS = [{"input_text": "What color was Cotton?", "turn_id": 1},
                  {"input_text": "Where did she live?", "turn_id": 2}]
COQA_ANSWERS = [{"input_text": "white", "span_start": 59, "span_end": 93, "turn_id": 1},
                {"input_text": "in a barn", "span_start": 18, "span_end": 28, "turn_id": 2}]


def test_coqa_original_keeps_every_gold_of_a_turn(tmp_path):
    extra = {"0": [{"input_text": "white kitten", "turn_id": 1},
                   {"input_text": "in a barn", "turn_id": 2}],
             "1": [{"input_text": "white", "turn_id": 1}, {"input_text": "barn", "turn_id": 2}],
             "2": [{"input_text": "white", "turn_id": 1},
                   {"input_text": "a barn near a farm house", "turn_id": 2}]}
    original = {"version": "1.0", "data": [{"id": "s1", "source": "mctest", "story": COQA_STORY,
                "questions": COQA_QUESTIONS, "answers": COQA_ANSWERS, "additional_answers": extra}]}
    a = load_task("coqa", write_json(tmp_path / "coqa" / "coqa-dev-v1.0.json", original), "test")
    assert [e["answers"] for e in a] == [["white", "white kitten", "white", "white"],
                                         ["in a barn", "in a barn", "barn",
                                          "a barn near a farm house"]]
    assert a[0]["prompt"] == COQA_STORY + "\n\nQ: What color was Cotton?\n\nA:"
    assert a[1]["prompt"] == (COQA_STORY + "\n\nQ: What color was Cotton?\n\nA: white\n\n"
                              "Q: Where did she live?\n\nA:")
    assert a[1]["target"] == " in a barn"
    assert score("coqa", "barn", a[1]["answers"])["f1"] == pytest.approx(11 / 12)
    extra["2"] = extra["2"][:1]
    with pytest.raises(ValueError, match=r"data\[0\]: 2 questions but answer lists of lengths"):
        load_task("coqa", write_json(tmp_path / "bad.json", original))


def test_coqa_layouts_with_the_same_golds_score_the_same(tmp_path):
    original = {"version": "1.0", "data": [{"id": "s1", "source": "mctest", "story": COQA_STORY,
                "questions": COQA_QUESTIONS, "answers": COQA_ANSWERS}]}
    flat = [{"source": "mctest", "story": COQA_STORY,
             "questions": [q["input_text"] for q in COQA_QUESTIONS],
             "answers": {"input_text": ["white", "in a barn"], "answer_start": [59, 18],
                         "answer_end": [93, 28]}}]
    a = load_task("coqa", write_json(tmp_path / "coqa" / "coqa-dev-v1.0.json", original), "test")
    b = load_task("coqa", write_jsonl(tmp_path / "hf" / "validation.jsonl", flat), "test")
    assert a == b and [e["answers"] for e in b] == [["white"], ["in a barn"]]
    for prediction in ("barn", "white", "in a barn", ""):
        assert [score("coqa", prediction, e["answers"]) for e in a] == \
               [score("coqa", prediction, e["answers"]) for e in b]


def test_commonsense_qa_original_and_flat(tmp_path):
    texts = ["bank", "library", "department store", "mall", "new york"]
    stem = ("A revolving door is convenient for two direction travel, but it also serves as a "
            "security measure at a what?")
    original = {"answerKey": "A", "id": "075e", "question": {
        "question_concept": "revolving door", "stem": stem,
        "choices": [{"label": lab, "text": t} for lab, t in zip("ABCDE", texts)]}}
    flat = {"id": "075e", "question": stem, "question_concept": "revolving door",
            "choices": {"label": list("ABCDE"), "text": texts}, "answerKey": "A"}
    a = load_task("commonsense_qa", write_jsonl(tmp_path / "commonsense_qa" /
                                                "dev_rand_split.jsonl", [original]), "test")
    b = load_task("commonsense_qa", write_jsonl(tmp_path / "hf" / "validation.jsonl", [flat]))
    assert a == b
    assert a[0]["prompt"] == ("Question: " + stem + "\nA. bank\nB. library\nC. department store\n"
                              "D. mall\nE. new york\nAnswer:")
    assert a[0]["choices"] == [" " + t for t in texts] and a[0]["label"] == 0
    assert a[0]["answers"] == ["bank"] and a[0]["target"] == " bank"
    # scored by likelihood, the continuations are the letters, as lm-evaluation-harness's
    assert a[0]["choice_letters"] == [" A", " B", " C", " D", " E"]
    letters = as_letters(a)[0]
    assert letters == {**a[0], "choices": [" A", " B", " C", " D", " E"], "target": " A"}
    assert (CSQA_LETTERS.metric, CSQA_LETTERS.scorer) == ("acc", None)  # scored by choose()
    with pytest.raises(ValueError, match="answerKey ''"):  # the test split has no labels
        load_task("commonsense_qa", write_jsonl(tmp_path / "t.jsonl", [{**flat, "answerKey": ""}]))


PIQA = [{"goal": "To separate egg whites from the yolk",
         "sol1": "Squeeze a water bottle over the yolk.", "sol2": "Use a sieve on the whole egg."},
        {"goal": "How do I ready a guinea pig cage?", "sol1": "Use rock salt.",
         "sol2": "Use paper bedding."}]


def test_piqa_original_labels_beside_and_flat(tmp_path):
    write_jsonl(tmp_path / "piqa" / "valid.jsonl", PIQA)
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    a = load_task("piqa", str(tmp_path), "test")
    assert [e["label"] for e in a] == [0, 1]
    assert a[0]["prompt"] == "Question: To separate egg whites from the yolk\nAnswer:"
    assert a[0]["choices"] == [" Squeeze a water bottle over the yolk.",
                               " Use a sieve on the whole egg."]
    b = load_task("piqa", write_jsonl(tmp_path / "hf" / "validation.jsonl",
                                      [{**r, "label": i} for i, r in enumerate(PIQA)]), "test")
    assert a == b
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n")
    with pytest.raises(ValueError, match="1 labels but .* 2 records"):
        load_task("piqa", str(tmp_path), "test")
    (tmp_path / "piqa" / "valid-labels.lst").unlink()
    with pytest.raises(ValueError, match="valid-labels.lst"):
        load_task("piqa", str(tmp_path), "test")


HELLA = {"ind": 24, "activity_label": "Roof shingle removal",
         "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
         "ctx": "A man is sitting on a roof. he", "split": "val",
         "split_type": "indomain", "source_id": "v_-JhWjGDPHMY",
         "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                     "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
         "label": 3}
HELLA_WIKI = {"ind": 9, "activity_label": "Home and Garden",
              "ctx_a": "[header] How to grow tulips [title] Choose a spot.", "ctx_b": "",
              "endings": ["[step] Dig a hole.", "Eat them.", "Paint them.", "Sell them."],
              "label": 0}


def test_hellaswag_original_and_flat(tmp_path):
    a = load_task("hellaswag", write_jsonl(tmp_path / "hellaswag" / "hellaswag_val.jsonl",
                                           [HELLA, HELLA_WIKI]), "test")
    assert a[0]["prompt"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert a[0]["label"] == 3 and a[0]["choices"][3] == " starts pulling up roofing on a roof."
    # WikiHow markup: ' [title]' becomes '. ', other [tags] go
    assert a[1]["prompt"] == "Home and Garden: How to grow tulips. Choose a spot."
    # the harness's cleaning leaves the space before a dropped tag, and it scores ' ' + that text
    assert a[1]["choices"][0] == "  Dig a hole." and a[1]["choices"][1] == " Eat them."
    flat = [{**HELLA, "label": "3"}, {**HELLA_WIKI, "label": "0"}]  # Hugging Face: string labels
    assert load_task("hellaswag", write_jsonl(tmp_path / "hf" / "validation.jsonl", flat)) == a
    with pytest.raises(ValueError, match="label ''"):
        load_task("hellaswag", write_jsonl(tmp_path / "t" / "test.jsonl", [{**HELLA, "label": ""}]))


def test_lambada(tmp_path):
    passages = ["In my palm is a clear stone; inside it is a small ivory statuette. A guardian "
                "angel, said the old dancer",
                "The shop was closed, so they went back to Mr. Jenkins'",
                'He looked at the boy and said one word: "run"']
    ex = load_task("lambada", write_jsonl(tmp_path / "lambada" / "lambada_test.jsonl",
                                          [{"text": t} for t in passages]), "test")
    assert ex[0]["prompt"] == passages[0][:-len(" dancer")]
    assert ex[0]["answers"] == ["dancer"] and ex[0]["target"] == " dancer"
    assert [e["target"] for e in ex[1:]] == [" Jenkins'", ' "run"']  # the word as it is written
    assert all(score("lambada", e["target"], e["answers"])["acc"] == 1.0 for e in ex)
    with pytest.raises(ValueError, match="LAMBADA has only a test split"):
        load_task("lambada", str(tmp_path), "train")
    with pytest.raises(ValueError, match="line 1: a LAMBADA passage is several words"):
        load_task("lambada", write_jsonl(tmp_path / "l.jsonl", [{"text": "two words "}]))


def test_webquestions_original_and_flat(tmp_path):
    original = [{"url": "http://www.freebase.com/view/en/justin_bieber",
                 "targetValue": '(list (description "Jazmine Grande") (description Jamaica))',
                 "utterance": "what is the name of justin bieber brother?"}]
    flat = [{"url": original[0]["url"], "question": original[0]["utterance"],
             "answers": ["Jazmine Grande", "Jamaica"]}]
    a = load_task("webquestions", write_json(tmp_path / "webquestions" /
                                             "webquestions.examples.test.json", original), "test")
    b = load_task("webquestions", write_jsonl(tmp_path / "hf" / "test.jsonl", flat), "test")
    assert a == b
    assert a[0]["prompt"] == "Question: what is the name of justin bieber brother?\nAnswer:"
    assert a[0]["answers"] == ["Jazmine Grande", "Jamaica"]


def test_nq_open(tmp_path):
    rows = [{"question": "where did they film hot tub time machine",
             "answer": ["Fernie Alpine Resort", "Fernie"]}]
    ex = load_task("nq_open", write_jsonl(tmp_path / "nq_open" / "NQ-open.dev.jsonl", rows))
    assert ex == [{"prompt": "Question: where did they film hot tub time machine\nAnswer:",
                   "target": " Fernie Alpine Resort",
                   "answers": ["Fernie Alpine Resort", "Fernie"]}]
    # the Hugging Face split names are found too; for evaluation validation is preferred over test
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / "hf" / "nq_open" / f"{split}.jsonl", rows)
    assert task_file("nq_open", str(tmp_path / "hf"), "train").endswith("nq_open/train.jsonl")
    assert task_file("nq_open", str(tmp_path / "hf"), "test").endswith("nq_open/validation.jsonl")


def test_downloaded_file_names_are_the_ones_load_task_reads(tmp_path):
    # `python -m tools.prepare task NAME --out DIR` writes DIR/NAME/<these names>;
    # load_task finds them.
    for name, files in TASK_FILES.items():
        for fname in files:
            fname = fname.removesuffix(".bz2")  # decompressed after the download
            if not fname.endswith(".lst"):
                assert fname in TASKS[name].files[0] + TASKS[name].files[1], (name, fname)
    write_jsonl(tmp_path / "commonsense_qa" / "dev_rand_split.jsonl", [])  # found through an alias
    assert task_file("csqa", str(tmp_path), "test").endswith("commonsense_qa/dev_rand_split.jsonl")
    assert get_task("csqa") is TASKS["commonsense_qa"]


def test_subset_is_random_with_the_seed_and_whole_split_by_default(tmp_path):
    rows = [{"question": f"q{i}", "answer": [f"a{i}"]} for i in range(50)]
    path = write_jsonl(tmp_path / "nq.jsonl", rows)
    whole = load_task("nq_open", path)
    assert [e["answers"] for e in whole] == [r["answer"] for r in rows]  # -1: all, in file order
    a, b, c = (load_task("nq_open", path, n=10, seed=s) for s in (0, 0, 1))
    assert len(a) == 10 and a == b and a != c
    assert a != whole[:10]  # not the first n
    positions = [whole.index(e) for e in a]
    assert positions == sorted(positions) and len(set(positions)) == 10  # distinct, in file order
    assert load_task("nq_open", path, n=50, seed=3) == whole
    with pytest.raises(ValueError, match="51 examples asked for, but the split has 50"):
        load_task("nq_open", path, n=51)
    with pytest.raises(ValueError, match="-1 .*or positive, got 0"):
        load_task("nq_open", path, n=0)


def test_builtin_tasks_train_and_test_never_overlap():
    for name in BUILTIN:
        train, test = load_task(name, None, "train", 200), load_task(name, None, "test", 50)
        assert len(train) == 200 and len(test) == 50
        assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
        assert load_task(name, None, "test", 50) == test
        assert all(e["answers"] == [e["target"]] for e in test)


def test_answers_end_with_the_token_where_decoding_stops():
    tok = get_tokenizer("byte")
    assert answer_ids(tok, TASKS["squad"], " Paris") == list(b" Paris\n")
    assert answer_ids(tok, TASKS["gsm8k"], " 2\n#### 2") == list(b" 2\n#### 2") + [tok.eot_id]
    assert answer_ids(tok, TASKS["lambada"], " word") == list(b" word\n")
    assert stop_ids(tok, TASKS["squad"]) == {ord("\n"), tok.eot_id}  # the one byte with a newline
    assert stop_ids(tok, BUILTIN["world:add"]) == {ord("\n"), tok.eot_id}
    assert stop_ids(tok, TASKS["gsm8k"]) == {tok.eot_id}  # solutions run over several lines
    assert stop_ids(tok, TASKS["lambada"]) == set()  # LAMBADA stops by length


# ----------------------------------------------------------------------------------------------
# Bad input.

def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        load_task("mmlu", "x")
    for name in list(TASKS) + list(BUILTIN):
        assert name in str(e.value)


def test_wrong_format_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GSM[0], {"question": "no answer here"}])
    with pytest.raises(ValueError, match=r"g\.jsonl, line 2: field 'answer' is missing"):
        load_task("gsm8k", path)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GSM[0]) + "\n" + json.dumps(GSM[1]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: not valid JSON"):
        load_task("gsm8k", str(path))
    path = write_jsonl(tmp_path / "h.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match=r"h\.jsonl, line 1: .*'####"):
        load_task("gsm8k", path)
    squad = {"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}
    with pytest.raises(ValueError, match=r"s\.json, data\[0\]\.paragraphs\[0\]: field 'context' "):
        load_task("squad", write_json(tmp_path / "s.json", squad))
    with pytest.raises(ValueError, match=r"n\.jsonl, line 1: field 'answer' of this "
                                         r"NaturalQuestions record should be a list"):
        load_task("nq_open", write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "a"}]))
    with pytest.raises(ValueError, match=r"w\.jsonl, line 1: every gold answer should be a str"):
        load_task("nq_open", write_jsonl(tmp_path / "w.jsonl", [{"question": "q", "answer": [3]}]))
    with pytest.raises(ValueError, match="python -m tools.prepare task squad"):
        load_task("squad", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="the file is empty"):
        (tmp_path / "e.jsonl").write_text("")
        load_task("nq_open", str(tmp_path / "e.jsonl"))


# Nested fields of the wrong kind: each refused with a ValueError that names the file, the line
# and the field, where a KeyError, TypeError or AttributeError (or a silent str() of a list in
# the prompt) came before.
CSQA_CHOICES = [{"label": "A", "text": "ant"}, {"label": "B", "text": "bee"}]
NESTED = [
    ("commonsense_qa", {"question": {"stem": "q", "choices": [{"label": "A"}, CSQA_CHOICES[1]]},
                        "answerKey": "A"}, r"line 1, question.choices\[0\]: field 'text'"),
    ("commonsense_qa", {"question": {"stem": "q", "choices": ["ant", "bee"]}, "answerKey": "A"},
     r"line 1, question.choices\[0\]: expected a JSON object"),
    ("commonsense_qa", {"question": {"stem": ["q"], "choices": CSQA_CHOICES}, "answerKey": "A"},
     r"line 1, question: field 'stem' .* should be a str"),
    ("commonsense_qa", {"question": "q", "choices": {"label": ["A", "B"], "text": ["ant", 2]},
                        "answerKey": "A"}, r"line 1, choices: text\[1\] .* should be a string"),
    ("hellaswag", {"ctx_a": "a", "ctx_b": "b", "activity_label": "x", "endings": [1, 2, 3, 4],
                   "label": 0}, r"line 1: endings\[0\] .* should be a string"),
    ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": 1.5}, r"line 1: label 1.5"),
    ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": True}, r"line 1: label True"),
    ("squad", {"title": ["T"], "context": "c", "question": "q", "answers": {"text": ["a"]}},
     r"line 1: field 'title' .* should be a str"),
    ("squad", {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
        {"question": ["q"], "answers": [{"text": "a"}]}]}]}]},
     r"line 1, data\[0\].paragraphs\[0\].qas\[0\]: field 'question' .* should be a str"),
    ("coqa", {"story": "s", "questions": [["q"]], "answers": {"input_text": ["a"]}},
     r"line 1: questions\[0\] .* should be a string"),
    ("webquestions", {"utterance": "q", "targetValue": ["(list (description a))"]},
     r"line 1: field 'targetValue' .* should be a str"),
]


@pytest.mark.parametrize("name,record,where", NESTED)
def test_nested_fields_are_checked_naming_file_line_and_field(tmp_path, name, record, where):
    path = write_jsonl(tmp_path / "t.jsonl", [record])
    with pytest.raises(ValueError, match=r"t\.jsonl, " + where):
        load_task(name, path)


def test_a_truncated_gzip_file_is_named(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl.gz", GSM * 50, gz=True)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"g\.jsonl\.gz: a truncated or damaged gzip file"):
        load_task("gsm8k", path)


def test_shared_examples_counts_evaluation_examples_seen_in_training():
    train = [{"prompt": f"q{i}", "target": f" a{i}"} for i in range(5)]
    evaluation = [{"prompt": "q1", "target": " a1"}, {"prompt": "q1", "target": " other"},
                  {"prompt": "new", "target": " a2"}, {"prompt": "q4", "target": " a4"}]
    assert tasks.shared_examples(train, evaluation) == 2  # the same prompt and answer only
    assert tasks.shared_examples(train, train) == 5
    assert tasks.shared_examples([], evaluation) == 0


def test_every_task_says_its_kind():
    kinds = {name: task.kind for name, task in TASKS.items()}
    assert {n for n, k in kinds.items() if k == "choice"} == {"piqa", "hellaswag"}
    assert CSQA_LETTERS.kind == "choice" and TASKS["commonsense_qa"].kind == "generate"
    assert all(task.kind == "generate" for task in BUILTIN.values())
    with pytest.raises(ValueError, match="multiple choice"):
        score(TASKS["piqa"], "x", ["x"])
