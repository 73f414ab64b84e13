import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The build machines cannot download tiktoken's gpt2 files; a copy lies in ../shared when present.
_cache = ROOT.parent / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)
