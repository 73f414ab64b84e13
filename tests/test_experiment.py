"""experiment.py: the count task, the pretraining documents and batches, FLOPs per answer, the
teacher-forced accuracy against pause_generate, a --smoke run of the whole command; for the other
tasks, a run end to end through finetune.py, and the checks of the pretrained checkpoints."""
import json
import os
import random
import shutil
from dataclasses import replace

import pytest
import torch

from tools import experiment as E
import pause
import train
from model import GPT, GPTConfig
from tools.common import UserError

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
    cfg = replace(E.ExperimentConfig(), p_echo=0.0, p_cot=1.0, p_pmask=1.0, pause_frac=0.0,
                  batch_size=8)
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
    cfg = replace(E.ExperimentConfig(), p_filler=0.0, p_pmask=0.0, block_size=64, pause_frac=0.2,
                  batch_size=256)
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
        x, _ = E.pretrain_batch(random.Random(0), replace(cfg, pause_frac=frac), True,
                                torch.Generator().manual_seed(0))
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
        # QK^T and AV at position t
        causal = sum(4 * c.n_embd * t for t in range(1, T + 1)) * c.n_layer
        norms = 2 * T * (2 * c.n_layer + 1) * c.n_embd  # the LayerNorm gains, counted as parameters
        assert E.flops_per_answer(c, K, M) == matmuls + causal + norms
    cfg = E.ExperimentConfig()
    deep = E.deeper_n_layer(cfg)
    base = replace(c, n_layer=cfg.n_layer)
    paused = E.flops_per_answer(base, cfg.K, cfg.num_pauses)
    assert E.flops_per_answer(replace(c, n_layer=deep), cfg.K, 0) >= paused
    assert E.flops_per_answer(replace(c, n_layer=deep - 1), cfg.K, 0) < paused


@pytest.mark.parametrize("where", ["append", "prepend"])
def test_teacher_forced_first_answer_token_matches_pause_generate(where):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=E.TOK.vocab_size, n_layer=2, n_head=4,
                          n_embd=32)).eval()
    test = E.problems(random.Random(5), 6, 12, "test")
    x, y = E.finetune_rows(test, 4, where)
    logits, _ = model(x)
    logits[..., P] = float("-inf")
    logits[..., E.TOK.vocab_size:] = float("-inf")
    first = logits.argmax(-1)[:, (y != pause.IGNORE).int().argmax(1)].diagonal()
    for i, (prompt, _) in enumerate(test):
        greedy = pause.pause_generate(model, [ids(prompt)], 4, P, 1, where=where)[0]
        assert greedy == [first[i].item()]


def test_answer_loss_against_a_loop_over_examples():
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=24, vocab_size=E.TOK.vocab_size, n_layer=1, n_head=2,
                          n_embd=16))
    test = E.problems(random.Random(6), 6, 8, "test")
    total, count = 0.0, 0
    for prompt, answer in test:
        x = torch.tensor([ids(prompt) + [P] * 3 + ids(answer)[:-1]])
        logits = model(x)[0][0, -len(answer):, :E.TOK.vocab_size].double()
        logits[:, P] = float("-inf")  # the pause is never an answer token
        logp = logits.log_softmax(-1)
        total -= sum(logp[i, t].item() for i, t in enumerate(ids(answer)))
        count += len(answer)
    value, loss = E.accuracy(model, test, 3)
    assert loss == pytest.approx(total / count, rel=1e-5)
    assert 0.0 <= value <= 100.0


def test_smoke_run_writes_all_four_configurations(tmp_path):
    cfg = E.parse_args(["--smoke", "--seeds", "2", "--workers", "1", "--minf_sweep",
                        "--filler_baseline", "--out_dir", str(tmp_path)])
    result = E.experiment(cfg)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    line = {(s["config"], s["M_inf"]): s for s in saved["rows"]}
    m = cfg.num_pauses
    for name in E.CONFIGS:
        s = line[name, m if name.endswith("PauseFT") else 0]
        assert s["seeds"] == [0, 1] and all(0.0 <= v <= 100.0 for v in s["values"])
        assert s["loss_mean"] > 0
    deep = next(s for s in saved["rows"] if "equal FLOPs" in s["config"])
    assert deep["n_layer"] > cfg.n_layer and deep["flops"] >= line["PausePT_PauseFT", m]["flops"]
    for name in ("StdPT_PauseFT", "PausePT_PauseFT"):
        assert {s["M_inf"] for s in saved["rows"] if s["config"] == name} == set(range(2 * m + 1))
    assert ("StdPT_FillerFT", m) in line and ("StdPT_StdFT + filler '.'", m) in line
    assert [s["b"] for s in saved["significance"]] == ["StdPT_StdFT", deep["config"]]
    assert set(saved["significance"][0]) >= {"welch_t", "dof"}
    assert saved["table"].count("\n") == len(saved["rows"]) + 1  # header, rule, one line per row


@pytest.mark.parametrize("flags, message", [
    (["--K", "12"], "--K must be 1..9"),
    (["--num_pauses", "12", "--minf_sweep"], "--block_size 24"),  # 8 + 24 + 2 positions > 24
    (["--task", "nope"], "invalid choice"),
    (["--task", "world:chain", "--K", "4"], "--K does not apply to --task world:chain"),
    (["--std_ckpt", "x.pt"], "--std_ckpt does not apply to --task count"),
    (["--task", "squad"], "needs its files: --data DIR"),
    (["--task", "world:add", "--pause_frac", "0"], "--pause_frac must be in (0, 1)"),
])
def test_bad_flags_name_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit):
        E.parse_args(flags)
    assert message in capsys.readouterr().err


def test_the_task_picks_its_defaults_and_help_shows_them(capsys):
    assert E.parse_args([]).num_pauses == 6
    world = E.parse_args(["--task", "world:chain"])
    assert (world.num_pauses, world.seeds, world.pretrain_steps) == (10, 3, 250)
    assert E.parse_args(["--task", "world:chain", "--num_pauses", "4"]).num_pauses == 4
    with pytest.raises(SystemExit):
        E.parse_args(["--task", "world:chain", "--help"])
    assert "(other tasks: 10) (default: 10)" in " ".join(capsys.readouterr().out.split())


def test_welch_against_a_hand_computation():
    t, dof = E.welch([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    # means 2 and 1; variances 1 and 3; se^2 = 1/3 + 1 = 4/3
    assert t == pytest.approx(1 / (4 / 3) ** 0.5)
    assert dof == pytest.approx((4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 1 / 2))


# -----------------------------------------------------------------------------------------------
# Other tasks: finetune.py as a subprocess, and the pretrained checkpoints it starts from

def pretrain(out_dir, pause_frac=0.0, max_steps=2, stop_after=0):
    """A checkpoint of a very small model written by train.py, in this process."""
    train.main(["--out_dir", str(out_dir), "--pause_frac", str(pause_frac),
                "--max_steps", str(max_steps), "--stop_after", str(stop_after),
                "--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "64",
                "--batch_size", "2", "--builtin_docs", "50", "--eval_iters", "1",
                "--device", "cpu"])
    return str(out_dir / "ckpt.pt")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    return dict(std=pretrain(root / "std"), pause=pretrain(root / "pause", 0.1),
                unfinished=pretrain(root / "cut", max_steps=3, stop_after=1))


def world(out_dir, *flags):
    return ["--task", "world:chain", "--out_dir", str(out_dir), "--device", "cpu", *flags]


def test_world_task_runs_end_to_end_through_finetune_py(ckpts, tmp_path):
    result = E.experiment(E.parse_args(world(
        tmp_path, "--std_ckpt", ckpts["std"], "--pause_ckpt", ckpts["pause"], "--num_pauses", "2",
        "--finetune_steps", "3", "--batch_size", "4", "--n_train", "8", "--n_eval", "4",
        "--seeds", "1", "--filler_baseline")))
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert [(s["config"], s["M_ft"], s["M_inf"]) for s in saved["rows"]] == [
        ("StdPT_StdFT", 0, 0), ("StdPT_PauseFT", 2, 2), ("PausePT_StdFT", 0, 0),
        ("PausePT_PauseFT", 2, 2), ("StdPT_StdFT + filler '.'", 0, 2)]
    for run in saved["runs"]:
        # each row is what its own finetune.py run wrote, from the checkpoint of its kind
        with open(os.path.join(run["run_dir"], "results.json")) as f:
            res = json.load(f)
        assert (res["value"], res["answer_loss"]) == (run["value"], run["answer_loss"])
        assert (res["num_pauses"], res["num_pauses_eval"]) == (run["M_ft"], run["M_inf"])
        assert res["config"] == run["config"]
    # the filler baseline evaluates the StdPT_StdFT model, kept by its run, without finetuning it
    std_ft, filler = saved["runs"][0]["run_dir"], saved["runs"][1]["run_dir"]
    assert "filler" in filler and os.listdir(std_ft).count("ckpt.pt") == 1
    assert "world:chain exact %" in saved["table"] and saved["ckpts"]["PausePT"] == ckpts["pause"]
    assert result["significance"] == []  # one seed: no Welch's t


def test_unfinished_checkpoint_is_refused_before_any_work(ckpts, tmp_path):
    cfg = E.parse_args(world(tmp_path, "--std_ckpt", ckpts["unfinished"],
                             "--pause_ckpt", ckpts["pause"]))
    with pytest.raises(UserError, match=f"{ckpts['unfinished']}: pretraining stopped at step 1 "
                                         "of 3"):
        E.experiment(cfg)
    assert os.listdir(tmp_path) == []


def test_std_checkpoint_given_as_pause_ckpt_is_refused(ckpts, tmp_path):
    cfg = E.parse_args(world(tmp_path, "--std_ckpt", ckpts["std"], "--pause_ckpt", ckpts["std"]))
    with pytest.raises(UserError, match=f"--pause_ckpt {ckpts['std']}: pause_frac 0.0, a StdPT "
                                         "checkpoint; --pause_ckpt needs a PausePT one"):
        E.experiment(cfg)
    cfg = E.parse_args(world(tmp_path, "--std_ckpt", ckpts["pause"],
                             "--pause_ckpt", ckpts["pause"]))
    with pytest.raises(UserError, match="--std_ckpt .*a PausePT checkpoint"):
        E.experiment(cfg)


def test_foreign_file_as_checkpoint_is_refused(ckpts, tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    cfg = E.parse_args(world(tmp_path / "out", "--std_ckpt", str(tmp_path / "other.pt"),
                             "--pause_ckpt", ckpts["pause"]))
    with pytest.raises(UserError, match="other.pt"):
        E.experiment(cfg)


def test_own_pretraining_is_resumed_reused_or_refused(ckpts, tmp_path):
    # The driver keeps its pretraining in out_dir/pretrain_std and out_dir/pretrain_pause.
    def plant(out_dir, **files):
        for name, src in files.items():
            os.makedirs(out_dir / name)
            shutil.copy(src, out_dir / name / "ckpt.pt")
        return out_dir

    cut = plant(tmp_path / "cut", pretrain_std=ckpts["unfinished"])  # step 1 of 3
    plan = E.pretraining_plan(E.parse_args(world(cut, "--pretrain_steps", "3")))
    path, args = plan["StdPT"]
    assert path == str(cut / "pretrain_std" / "ckpt.pt")
    assert args == ["--out_dir", str(cut / "pretrain_std"), "--pause_frac", "0.0",
                    "--max_steps", "3", "--device", "cpu", "--resume"]
    assert plan["PausePT"][1][:4] == ["--out_dir", str(cut / "pretrain_pause"), "--pause_frac",
                                      "0.1"]
    done = plant(tmp_path / "done", pretrain_std=ckpts["std"], pretrain_pause=ckpts["pause"])
    plan = E.pretraining_plan(E.parse_args(world(done, "--pretrain_steps", "2")))
    assert [args for _, args in plan.values()] == [None, None]  # both finished: reused
    with pytest.raises(UserError, match="pretrain_std/ckpt.pt holds another run"):
        E.pretraining_plan(E.parse_args(world(done, "--pretrain_steps", "3")))
    wrong = plant(tmp_path / "wrong", pretrain_pause=ckpts["std"])
    with pytest.raises(UserError, match="pretrain_pause/ckpt.pt holds another run"):
        E.pretraining_plan(E.parse_args(world(wrong, "--pretrain_steps", "2")))
