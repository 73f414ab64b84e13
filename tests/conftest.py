import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The build machines cannot download tiktoken's gpt2 files; a copy lies in ../shared when present.
_cache = ROOT.parent / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    # The course's graders run alone with `python -m pytest tests -m exercises`; a misspelt marker
    # is an error, not a test silently left out of the grading.
    config.addinivalue_line("markers", "exercises: the tests that grade the course's exercises "
                            "(docs/teaching.md)")
    config.option.strict_markers = True
