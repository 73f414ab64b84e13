"""experiment.py: the count task, the pretraining documents and batches, FLOPs per answer, the
teacher-forced accuracy against pause_generate, and a --smoke run of the whole command."""
import json
import random
from dataclasses import replace

import pytest
import torch

import experiment as E
import pause
from model import GPT, GPTConfig

P, EOT = E.PAUSE_ID, E.EOT


def ids(text):
    return list(text.encode())


def plain_count(prompt):
    """The answer computed from the prompt text alone: how many digits d have (d + q) % 10 >= 5."""
    digits, letter = prompt.split("?")
    q = "ABCDEFGHIJ".index(letter)
    bits = ["1" if (int(d) + q) % 10 >= 5 else "0" for d in digits]
    return "".join(bits), f"={bits.count('1')}\n"


def test_task_answers_match_a_plain_computation():
    assert E.render([3, 0, 5, 9, 1, 2], 3) == ("305912?D", "101001", "=3\n")  # worked by hand
    rng = random.Random(0)
    for K in (1, 6, 9):
        for _ in range(300):
            prompt, results, answer = E.render(*E.count_problem(rng, K))
            assert len(prompt) == K + 2
            assert (results, answer) == plain_count(prompt)


def test_splits_are_disjoint():
    train = {p for p, _ in E.problems(random.Random(1), 6, 2000, "train")}
    test = {p for p, _ in E.problems(random.Random(2), 6, 300, "test")}
    assert train and test and not train & test


def test_document_layouts_on_a_hand_written_example():
    a, q = [3, 0, 5, 9, 1, 2], 3
    expect = {"cot": ids("305912?D101001=3\n"), "direct": ids("305912?D=3\n"),
              "echo": ids("305912?D305912\n"), "filler": ids("305912?D") + [P] * 6 + ids("=3\n")}
    for kind, want in expect.items():
        x, lab = E.document(a, q, kind)
        assert x == want + [EOT] and lab == x, kind
    x, lab = E.document(a, q, "pmask")
    assert x == expect["filler"] + [EOT]
    assert lab == expect["cot"] + [EOT]  # the pauses hide the per-item results, still the labels
    with pytest.raises(ValueError, match="unknown document kind"):
        E.document(a, q, "story")


def test_pmask_targets_sit_at_the_pause_positions():
    # every document a pmask document, no random pauses: each row starts with one
    cfg = replace(E.ExperimentConfig(), p_echo=0.0, p_cot=1.0, p_pmask=1.0, pause_frac=0.0, batch_size=8)
    x, y = E.pretrain_batch(random.Random(3), cfg, True, torch.Generator().manual_seed(0))
    K = cfg.K
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        prompt = bytes(row_x[:K + 2]).decode()
        results, answer = plain_count(prompt)
        assert row_x[K + 2:2 * K + 2] == [P] * K
        # the query letter predicts result 1, pause j predicts result j + 1, the last pause '='
        assert row_y[K + 1:2 * K + 1] == ids(results)
        assert row_y[2 * K + 1:2 * K + 4] == ids(answer)
    # StdPT sees the same problems as cot documents: the same targets, written out as inputs
    xs, ys = E.pretrain_batch(random.Random(3), cfg, False, torch.Generator().manual_seed(0))
    assert (xs == P).sum() == 0
    assert xs[0, K + 2:2 * K + 2].tolist() == y[0, K + 1:2 * K + 1].tolist()


def test_pausept_rows_get_random_pauses_at_about_pause_frac():
    # no structured pauses (filler, pmask): every pause in the batch is a random one
    cfg = replace(E.ExperimentConfig(), p_filler=0.0, p_pmask=0.0, block_size=64, pause_frac=0.2, batch_size=256)
    x, y = E.pretrain_batch(random.Random(0), cfg, True, torch.Generator().manual_seed(0))
    m_pt = pause.num_pretrain_pauses(0.2, 65)
    share = (x == P).float().mean().item()
    assert abs(share - m_pt / (65 + m_pt)) < 0.02  # M_pt pauses among N + M_pt slots, trimmed to N
    assert (y[:, :-1][x[:, 1:] == P] == pause.IGNORE).all()  # S_ignore: a pause is never a target
    assert ((x == P).sum(1) > 0).float().mean() > 0.95
    xs, _ = E.pretrain_batch(random.Random(0), cfg, False, torch.Generator().manual_seed(0))
    assert (xs == P).sum() == 0  # StdPT: none


def test_random_pauses_also_in_batches_with_pmask_documents():
    # The default mix holds pmask documents in nearly every batch; random pauses must still come
    # (the research prototype skipped them for any batch holding one). Per row, pause_frac 0.1 adds
    # about M_pt * 25 / (25 + M_pt) pauses to those of the filler and pmask documents.
    cfg = replace(E.ExperimentConfig(), batch_size=512)
    count = {}
    for frac in (0.0, 0.1):
        x, _ = E.pretrain_batch(random.Random(0), replace(cfg, pause_frac=frac), True, torch.Generator().manual_seed(0))
        count[frac] = (x == P).sum(1).float().mean().item()
    m_pt = pause.num_pretrain_pauses(0.1, cfg.block_size + 1)
    assert m_pt == 2
    assert 0.75 * m_pt < count[0.1] - count[0.0] < 1.1 * m_pt


def test_flops_per_answer_against_a_plain_count():
    c = GPTConfig(block_size=24, vocab_size=258, n_layer=2, n_head=4, n_embd=64)
    for K, M in ((6, 0), (6, 6), (4, 3)):
        T = (K + 2) + M + 2
        # every linear layer (the output layer too) multiplies T vectors by its weight matrix
        matmuls = sum(2 * T * m.in_features * m.out_features for m in GPT(c).modules()
                      if isinstance(m, torch.nn.Linear))
        causal = sum(4 * c.n_embd * t for t in range(1, T + 1)) * c.n_layer  # QK^T and AV at position t
        norms = 2 * T * (2 * c.n_layer + 1) * c.n_embd  # the LayerNorm gains, counted as parameters
        assert E.flops_per_answer(c, K, M) == matmuls + causal + norms
    cfg = E.ExperimentConfig()
    deep = E.deeper_n_layer(cfg)
    base = replace(c, n_layer=cfg.n_layer)
    assert E.flops_per_answer(replace(c, n_layer=deep), cfg.K, 0) >= E.flops_per_answer(base, cfg.K, cfg.M_ft)
    assert E.flops_per_answer(replace(c, n_layer=deep - 1), cfg.K, 0) < E.flops_per_answer(base, cfg.K, cfg.M_ft)


@pytest.mark.parametrize("where", ["append", "prepend"])
def test_teacher_forced_first_answer_token_matches_pause_generate(where):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=E.TOK.vocab_size, n_layer=2, n_head=4, n_embd=32)).eval()
    test = E.problems(random.Random(5), 6, 12, "test")
    x, y = E.finetune_rows(test, 4, where)
    logits, _ = model(x)
    logits[..., P] = float("-inf")
    logits[..., E.TOK.vocab_size:] = float("-inf")
    first = logits.argmax(-1)[:, (y != pause.IGNORE).int().argmax(1)].diagonal()
    for i, (prompt, _) in enumerate(test):
        greedy = pause.pause_generate(model, ids(prompt), 4, P, 1, where=where)
        assert greedy == [first[i].item()]


def test_smoke_run_writes_all_four_configurations(tmp_path):
    cfg = E.parse_args(["--smoke", "--seeds", "2", "--workers", "1", "--minf_sweep", "--filler_baseline",
                        "--out_dir", str(tmp_path)])
    result = E.experiment(cfg)
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert saved["lines"] == json.loads(json.dumps(result["lines"]))
    by_name = {}
    for line in saved["lines"]:
        by_name.setdefault(line["name"], []).append(line)
    for name in E.CONFIGS:
        (line,) = by_name[name]
        assert len(line["acc"]) == 2 and all(0.0 <= v <= 1.0 for v in line["acc"])
        assert line["M_inf"] == (cfg.M_ft if name.endswith("PauseFT") else 0)
    deep = next(v[0] for k, v in by_name.items() if "equal FLOPs" in k)
    assert deep["n_layer"] > cfg.n_layer and deep["flops"] >= by_name["PausePT_PauseFT"][0]["flops"]
    sweep = {line["M_inf"] for line in by_name["PausePT_PauseFT, M_inf sweep"]}
    assert sweep | {cfg.M_ft} == set(range(2 * cfg.M_ft + 1))
    assert "StdPT_FillerFT ('.' instead of pauses)" in by_name
    assert set(saved["significance"]) >= {"welch_t", "dof"}


def test_bad_flags_name_the_flag():
    with pytest.raises(SystemExit):
        E.parse_args(["--K", "12"])
    with pytest.raises(SystemExit):
        E.parse_args(["--M_ft", "12", "--minf_sweep"])  # 8 + 24 + 2 positions > block_size 24


def test_welch_against_a_hand_computation():
    t, dof = E.welch([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    # means 2 and 1; variances 1 and 3; se^2 = 1/3 + 1 = 4/3
    assert t == pytest.approx(1 / (4 / 3) ** 0.5)
    assert dof == pytest.approx((4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 1 / 2))
