import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="where the tests marked `device` run (cpu, cuda); benchmarks/gpu_check.sh passes cuda")


@pytest.fixture(scope="session")
def device(request) -> str:
    """The ``--device`` of the run; asking for CUDA on a machine without it is an error, not a skip."""
    import torch

    name = request.config.getoption("--device")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"--device {name}: this machine has no CUDA device")
    return name


@pytest.fixture(scope="session")
def packaged_data() -> Path:
    """The datasets shipped in the package (``llm-adapters/``, ``math-split/``): every clone has them."""
    from modetune.data.packaged import DATA_ROOT

    return DATA_ROOT


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default model, converted once and cached."""
    from modetune.utils.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A tiny random Llama with the default model's tokenizer, saved as a local model folder."""
    from transformers import AutoTokenizer

    from tiny import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir))
    model = tiny_model("llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a small shared machine, more threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    """The default model's tokenizer, padding on the left (for batched generation)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    tok.padding_side = "left"
    return tok
