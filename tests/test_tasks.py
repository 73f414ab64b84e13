"""The nine tasks' loaders on small fixture files written here in each real format (original
release and Hugging Face's flat layout where they differ), the metrics on hand-checked cases, and
bad input."""
import gzip
import json
from decimal import Decimal

import pytest


from tasks import (BUILTIN, TASK_FILES, TASKS, exact_match, f1, gsm8k_correct, gsm8k_gold, lambada_correct, last_number,
                      load_task, normalize_answer, task_file)


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
    assert normalize_answer("the theater") == "theater"            # articles are whole words only
    assert normalize_answer("  Zürich\t(CH)  ") == "zürich ch"      # unicode letters survive, ASCII punctuation goes
    assert normalize_answer("“quoted”") == "“quoted”"               # SQuAD strips ASCII punctuation only


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Eiffel Tower.", ["Eiffel tower", "Paris"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower", "Paris"]) == 0.0
    assert exact_match("Zürich", "zürich") == 1.0
    # pred {cat, sat}, gold {cat, sat, on, mat}: precision 1, recall 1/2 -> F1 2/3
    assert f1("the cat sat", ["cat sat on the mat"]) == pytest.approx(2 / 3)
    # several golds: the maximum
    assert f1("blue house", ["red house", "blue house"]) == 1.0
    assert f1("blue", ["red house", "blue car"]) == pytest.approx(2 / 3)
    assert f1("red", ["red house", "red"]) == 1.0
    # duplicate golds change nothing
    assert f1("x y", ["y z", "y z"]) == f1("x y", ["y z"]) == pytest.approx(0.5)
    assert f1("a b", ["b c"]) == pytest.approx(2 / 3)  # 'a' is an article: pred {b} against {b, c}
    assert exact_match("x", ["x", "x"]) == 1.0
    # repeated tokens count at most as often as in both: common {x:1, y:1} -> P = R = 2/3
    assert f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert f1("completely wrong", ["right"]) == 0.0
    # an answer that normalizes to nothing (SQuAD v2's convention: empty agrees only with empty)
    assert f1("", ["the"]) == 1.0 and f1("", ["cat"]) == 0.0 and f1("cat", ["a"]) == 0.0
    with pytest.raises(ValueError, match="no gold"):
        f1("x", [])


def test_gsm8k_numbers():
    assert last_number("so 1,234 apples") == Decimal(1234)
    assert last_number("it fell to -3 degrees") == Decimal(-3)
    assert last_number("costs $3.50.") == Decimal("3.5")
    assert last_number("no number here") is None
    assert gsm8k_gold("48/2 = <<48/2=24>>24\n#### 72") == 72
    assert gsm8k_gold("#### 1,200") == 1200
    assert gsm8k_correct("He has 24, so 48+24 = 72.", "steps\n#### 72") == 1.0
    assert gsm8k_correct("1200", "#### 1,200") == 1.0
    assert gsm8k_correct("the result is -3", "#### -3") == 1.0
    assert gsm8k_correct("72 then 73", "#### 72") == 0.0        # the *last* number counts
    assert gsm8k_correct("I do not know", "#### 72") == 0.0
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("72")


def test_lambada_last_word():
    assert lambada_correct(" lambada.", "lambada") == 1.0
    assert lambada_correct("lambada is a dance", "lambada") == 1.0
    assert lambada_correct("Lambada", "lambada") == 0.0
    assert lambada_correct("", "lambada") == 0.0


# ----------------------------------------------------------------------------------------------
# Loaders: each real format, both layouts.

GSM = [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"},
       {"question": "A debt of 1,000 dollars grows by 200. How much?", "answer": "1000+200=1200\n#### 1,200"}]


@pytest.mark.parametrize("name", ["test.jsonl", "test.jsonl.gz"])
def test_gsm8k(tmp_path, name):
    path = write_jsonl(tmp_path / "gsm8k" / name, GSM, gz=name.endswith(".gz"))
    for p in (path, str(tmp_path)):  # the file itself, or DIR holding gsm8k/
        ex = load_task("gsm8k", p, "test")
        assert len(ex) == 2
        assert ex[0]["prompt"] == "Question: " + GSM[0]["question"] + "\nAnswer:"
        assert ex[0]["target"] == " " + GSM[0]["answer"]
        assert gsm8k_correct("so 72", ex[0]["answers"][0]) and gsm8k_correct("1200", ex[1]["answers"][0])


SQUAD_CONTEXT = "Normandy is a region in France. Its capital, Rouen, lies on the Seine; Zürich does not."


def test_squad_original_and_flat_agree(tmp_path):
    original = {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [{"context": SQUAD_CONTEXT, "qas": [
        {"id": "q1", "question": "In what country is Normandy?",
         "answers": [{"text": "France", "answer_start": 24}, {"text": "France", "answer_start": 24},
                     {"text": "in France", "answer_start": 21}]},
        {"id": "q2", "question": "Which city is not in Normandy?", "answers": [{"text": "Zürich", "answer_start": 70}]}]}]}]}
    flat = [{"id": "q1", "title": "Normans", "context": SQUAD_CONTEXT, "question": "In what country is Normandy?",
             "answers": {"text": ["France", "France", "in France"], "answer_start": [24, 24, 21]}},
            {"id": "q2", "title": "Normans", "context": SQUAD_CONTEXT, "question": "Which city is not in Normandy?",
             "answers": {"text": ["Zürich"], "answer_start": [70]}}]
    a = load_task("squad", write_json(tmp_path / "orig" / "squad" / "dev-v1.1.json", original), "test")
    b = load_task("squad", write_jsonl(tmp_path / "hf" / "squad" / "validation.jsonl", flat), "test")
    assert a == b and len(a) == 2
    assert a[0]["prompt"] == ("Title: Normans\n\nBackground: " + SQUAD_CONTEXT +
                              "\n\nQuestion: In what country is Normandy?\n\nAnswer:")
    assert a[0]["answers"] == ["France", "France", "in France"] and a[0]["target"] == " France"
    assert a[1]["answers"] == ["Zürich"]
    assert load_task("squad", str(tmp_path / "orig"), "test") == a  # found by its usual name in DIR/squad/


COQA_STORY = "Once upon a time, in a barn near a farm house, there lived a little white kitten named Cotton 🐱."


def test_coqa_original_and_flat(tmp_path):
    original = {"version": "1.0", "data": [{"id": "s1", "source": "mctest", "story": COQA_STORY,
        "questions": [{"input_text": "What color was Cotton?", "turn_id": 1},
                      {"input_text": "Where did she live?", "turn_id": 2}],
        "answers": [{"input_text": "white", "span_start": 59, "span_end": 93, "turn_id": 1},
                    {"input_text": "in a barn", "span_start": 18, "span_end": 28, "turn_id": 2}],
        "additional_answers": {"0": [{"input_text": "white kitten", "turn_id": 1},
                                     {"input_text": "in a barn near a farm house", "turn_id": 2}]}}]}
    a = load_task("coqa", write_json(tmp_path / "coqa" / "coqa-dev-v1.0.json", original), "test")
    assert [e["answers"] for e in a] == [["white", "white kitten"], ["in a barn", "in a barn near a farm house"]]
    assert a[0]["prompt"] == COQA_STORY + "\n\nQ: What color was Cotton?\n\nA:"
    assert a[1]["prompt"] == COQA_STORY + "\n\nQ: What color was Cotton?\n\nA: white\n\nQ: Where did she live?\n\nA:"
    flat = [{"source": "mctest", "story": COQA_STORY, "questions": ["What color was Cotton?", "Where did she live?"],
             "answers": {"input_text": ["white", "in a barn"], "answer_start": [59, 18], "answer_end": [93, 28]}}]
    b = load_task("coqa", write_jsonl(tmp_path / "hf" / "validation.jsonl", flat), "test")
    assert [e["prompt"] for e in b] == [e["prompt"] for e in a]
    assert [e["answers"] for e in b] == [["white"], ["in a barn"]]


def test_commonsense_qa_original_and_flat(tmp_path):
    texts = ["bank", "library", "department store", "mall", "new york"]
    original = {"answerKey": "A", "id": "075e", "question": {"question_concept": "revolving door",
                "choices": [{"label": l, "text": t} for l, t in zip("ABCDE", texts)],
                "stem": "A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?"}}
    flat = {"id": "075e", "question": original["question"]["stem"], "question_concept": "revolving door",
            "choices": {"label": list("ABCDE"), "text": texts}, "answerKey": "A"}
    a = load_task("commonsense_qa", write_jsonl(tmp_path / "commonsense_qa" / "dev_rand_split.jsonl", [original]), "test")
    b = load_task("commonsense_qa", write_jsonl(tmp_path / "hf" / "validation.jsonl", [flat]), "test")
    assert a == b
    assert a[0]["prompt"] == ("Question: " + flat["question"] + "\nA. bank\nB. library\nC. department store\n"
                              "D. mall\nE. new york\nAnswer:")
    assert a[0]["choices"] == [" " + t for t in texts] and a[0]["label"] == 0
    assert a[0]["answers"] == ["bank"] and a[0]["target"] == " bank"
    with pytest.raises(ValueError, match="answerKey ''"):  # the test split has no labels
        load_task("commonsense_qa", write_jsonl(tmp_path / "t.jsonl", [{**flat, "answerKey": ""}]))


PIQA = [{"goal": "To separate egg whites from the yolk", "sol1": "Squeeze a water bottle over the yolk.",
         "sol2": "Use a sieve on the whole egg."},
        {"goal": "How do I ready a guinea pig cage?", "sol1": "Use rock salt.", "sol2": "Use paper bedding."}]


def test_piqa_original_labels_beside_and_flat(tmp_path):
    write_jsonl(tmp_path / "piqa" / "valid.jsonl", PIQA)
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    a = load_task("piqa", str(tmp_path), "test")
    assert [e["label"] for e in a] == [0, 1]
    assert a[0]["prompt"] == "Question: To separate egg whites from the yolk\nAnswer:"
    assert a[0]["choices"] == [" Squeeze a water bottle over the yolk.", " Use a sieve on the whole egg."]
    b = load_task("piqa", write_jsonl(tmp_path / "hf" / "validation.jsonl",
                                      [{**r, "label": i} for i, r in enumerate(PIQA)]), "test")
    assert a == b
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n")
    with pytest.raises(ValueError, match="1 labels but .* 2 records"):
        load_task("piqa", str(tmp_path), "test")
    (tmp_path / "piqa" / "valid-labels.lst").unlink()
    with pytest.raises(ValueError, match="valid-labels.lst"):
        load_task("piqa", str(tmp_path), "test")


HELLA = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
         "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "source_id": "v_-JhWjGDPHMY",
         "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                     "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": 3}
HELLA_WIKI = {"ind": 9, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow tulips [title] Choose a spot.",
              "ctx_b": "", "endings": ["[step] Dig a hole.", "Eat them.", "Paint them.", "Sell them."], "label": 0}


def test_hellaswag_original_and_flat(tmp_path):
    a = load_task("hellaswag", write_jsonl(tmp_path / "hellaswag" / "hellaswag_val.jsonl", [HELLA, HELLA_WIKI]), "test")
    assert a[0]["prompt"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert a[0]["label"] == 3 and a[0]["choices"][3] == " starts pulling up roofing on a roof."
    # WikiHow markup: ' [title]' becomes '. ', other [tags] go
    assert a[1]["prompt"] == "Home and Garden: How to grow tulips. Choose a spot."
    assert a[1]["choices"][0] == " Dig a hole."
    flat = [{**HELLA, "label": "3"}, {**HELLA_WIKI, "label": "0"}]  # Hugging Face stores the label as a string
    assert load_task("hellaswag", write_jsonl(tmp_path / "hf" / "validation.jsonl", flat), "test") == a
    with pytest.raises(ValueError, match="label ''"):
        load_task("hellaswag", write_jsonl(tmp_path / "t" / "test.jsonl", [{**HELLA, "label": ""}]))


def test_lambada(tmp_path):
    text = "In my palm is a clear stone; inside it is a small ivory statuette. A guardian angel, said the old dancer"
    ex = load_task("lambada", write_jsonl(tmp_path / "lambada" / "lambada_test.jsonl", [{"text": text}]), "test")
    assert ex[0]["prompt"] == text[:-len(" dancer")] and ex[0]["answers"] == ["dancer"] and ex[0]["target"] == " dancer"
    with pytest.raises(ValueError, match="LAMBADA has only a test split"):
        load_task("lambada", str(tmp_path), "train")


def test_webquestions_original_and_flat(tmp_path):
    original = [{"url": "http://www.freebase.com/view/en/justin_bieber",
                 "targetValue": '(list (description "Jazmine Grande") (description Jamaica))',
                 "utterance": "what is the name of justin bieber brother?"}]
    flat = [{"url": original[0]["url"], "question": original[0]["utterance"], "answers": ["Jazmine Grande", "Jamaica"]}]
    a = load_task("webquestions", write_json(tmp_path / "webquestions" / "webquestions.examples.test.json", original), "test")
    b = load_task("webquestions", write_jsonl(tmp_path / "hf" / "test.jsonl", flat), "test")
    assert a == b
    assert a[0]["prompt"] == "Question: what is the name of justin bieber brother?\nAnswer:"
    assert a[0]["answers"] == ["Jazmine Grande", "Jamaica"]


def test_nq_open(tmp_path):
    rows = [{"question": "where did they film hot tub time machine", "answer": ["Fernie Alpine Resort", "Fernie"]}]
    ex = load_task("nq_open", write_jsonl(tmp_path / "nq_open" / "NQ-open.dev.jsonl", rows), "test")
    assert ex == [{"prompt": "Question: where did they film hot tub time machine\nAnswer:",
                   "target": " Fernie Alpine Resort", "answers": ["Fernie Alpine Resort", "Fernie"]}]
    # the Hugging Face split names are found too; for evaluation validation is preferred over test
    write_jsonl(tmp_path / "hf" / "nq_open" / "train.jsonl", rows)
    write_jsonl(tmp_path / "hf" / "nq_open" / "validation.jsonl", rows)
    write_jsonl(tmp_path / "hf" / "nq_open" / "test.jsonl", rows)
    assert task_file("nq_open", str(tmp_path / "hf"), "train").endswith("nq_open/train.jsonl")
    assert task_file("nq_open", str(tmp_path / "hf"), "test").endswith("nq_open/validation.jsonl")


def test_downloaded_file_names_are_the_ones_load_task_reads(tmp_path):
    # `python prepare.py task NAME --out DIR` writes DIR/NAME/<these names>; load_task must find them.
    for name, files in TASK_FILES.items():
        for fname in files:
            fname = fname.removesuffix(".bz2")  # decompressed after the download
            if not fname.endswith(".lst"):
                assert fname in TASKS[name].files[0] + TASKS[name].files[1], (name, fname)
    write_jsonl(tmp_path / "commonsense_qa" / "dev_rand_split.jsonl", [])  # found through data.py's alias
    assert task_file("csqa", str(tmp_path), "test").endswith("commonsense_qa/dev_rand_split.jsonl")


def test_builtin_tasks_train_and_test_never_overlap():
    for name in BUILTIN:
        train, test = load_task(name, None, "train", 200), load_task(name, None, "test", 50)
        assert len(train) == 200 and len(test) == 50
        assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
        assert load_task(name, None, "test", 50) == test
        assert all(e["answers"] == [e["target"]] for e in test)


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
    with pytest.raises(ValueError, match=r"h\.jsonl, line 1: .*'####'"):
        load_task("gsm8k", path)
    squad = {"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}
    with pytest.raises(ValueError, match=r"s\.json, data\[0\]\.paragraphs\[0\]: field 'context' is missing"):
        load_task("squad", write_json(tmp_path / "s.json", squad))
    with pytest.raises(ValueError, match=r"n\.jsonl, line 1: field 'answer' of this NaturalQuestions record should be a list"):
        load_task("nq_open", write_jsonl(tmp_path / "n.jsonl", [{"question": "q", "answer": "one string"}]))
    with pytest.raises(ValueError, match="python prepare.py task squad"):
        load_task("squad", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="the file is empty"):
        (tmp_path / "e.jsonl").write_text("")
        load_task("nq_open", str(tmp_path / "e.jsonl"))
