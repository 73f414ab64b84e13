import re

import pytest

from data import WORLD_TASKS, builtin_documents, synthetic_task, world_split


def _eval_chain(prompt):
    env = {}
    for part in prompt.rstrip("=").split(";")[:-1]:
        var, expr = part.split("=")
        env[var] = eval(expr, {}, dict(env))  # plain check of the generator's arithmetic
    return env[prompt.rstrip("=").split(";")[-1]]


@pytest.mark.parametrize("name", sorted(WORLD_TASKS))
def test_synthetic_tasks_are_deterministic_correct_and_split(name):
    train = synthetic_task(name, "train", 300, seed=1)
    test = synthetic_task(name, "test", 100, seed=1)
    assert synthetic_task(name, "test", 100, seed=1) == test
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert len({e["prompt"] for e in test}) == 100
    for e in train + test:
        p, a = e["prompt"], int(e["answer"])
        if name == "add":
            x, y = map(int, p.rstrip("=").split("+"))
            assert a == x + y
        elif name == "chain":
            assert a == _eval_chain(p)
        else:
            have, gets = map(int, re.findall(r"has (\d+) .* gets (\d+)", p)[0])
            gives = re.findall(r"gives away (\d+)", p)
            assert a == have + gets - (int(gives[0]) if gives else 0) >= 0


def test_corpus_holds_no_test_prompt():
    docs = builtin_documents(300, seed=0)
    assert builtin_documents(300, seed=0) == docs
    test_prompts = {e["prompt"] for name in WORLD_TASKS for e in synthetic_task(name, "test", 50)}
    lines = [line for d in docs for line in d.splitlines()]
    assert len(lines) > 1000
    for line in lines:
        prompt = line[:line.rindex("=") + 1] if "=" in line else line[:line.rindex("? ") + 2]
        assert world_split(prompt) == "train" and prompt not in test_prompts
