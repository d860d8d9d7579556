"""A real package: `python -m build` gives a wheel and an sdist; the wheel installed into a fresh virtual
environment (no editable install, no source tree on sys.path) gives a working `modetune` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".ruff_cache", "outputs", "logs")


def _run(*args, **kwargs):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist built from a copy of the source tree (the checkout stays clean)."""
    work = tmp_path_factory.mktemp("package")
    shutil.copytree(ROOT, work / "src-tree", ignore=IGNORE)
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "dist", work / "src-tree")
    wheels, sdists = list((work / "dist").glob("*.whl")), list((work / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return {"wheel": wheels[0], "sdist": sdists[0], "work": work}


def test_wheel_contents_and_metadata(built):
    from modetune.utils.version import __version__

    names = zipfile.ZipFile(built["wheel"]).namelist()
    shipped = [n for n in names if n.startswith("modetune/data/files/")]
    packaged = [p for p in (ROOT / "src/modetune/data/files").rglob("*") if p.is_file()]
    assert len(shipped) == len(packaged) > 10  # every packaged dataset file is in the wheel
    assert "modetune/mod/ensemble.py" in names and "modetune/cli/main.py" in names
    configs = sorted(p.relative_to(ROOT / "src/modetune").as_posix() for p in (ROOT / "src/modetune/configs").rglob("*.*"))
    assert {"configs/default.yaml", "configs/paper_llama7b.yaml", "configs/accelerate_fsdp.yaml",
            "configs/deepspeed_zero3.json"} <= set(configs)
    assert sorted(n for n in names if n.startswith("modetune/configs/")) == ["modetune/" + c for c in configs]
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(built["wheel"]).read(meta_name).decode())
    assert meta["Name"] == "modetune" and meta["Version"] == __version__
    assert meta["License-Expression"] == "Apache-2.0" and meta["Requires-Python"] == ">=3.10"
    assert any("Programming Language :: Python :: 3.11" == c for c in meta.get_all("Classifier"))
    assert meta.get_all("Project-URL") and "arxiv.org" in " ".join(meta.get_all("Project-URL"))
    assert "Mixture-of-Depths" in meta.get_payload()  # the README is the long description
    assert any(n.endswith("licenses/LICENSE") for n in names)
    requires = " ".join(meta.get_all("Requires-Dist"))
    assert 'extra == "trl"' in requires and 'deepspeed>=0.19; extra == "deepspeed"' in requires
    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_wheel_in_a_fresh_venv(built, default_model_dir):
    """No torch download: the fresh venv sees the current environment's packages through a .pth line
    (whose own .pth files, among them the editable modetune, are not processed)."""
    from modetune.utils.version import __version__

    env_dir = built["work"] / "venv"
    _run(sys.executable, "-m", "venv", env_dir)
    python = env_dir / "bin" / "python"
    own_site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (own_site / "zz_shared_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", built["wheel"])
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run_dir = built["work"] / "cwd"
    run_dir.mkdir()
    where = _run(python, "-c", "import modetune, sys; print(modetune.__file__); print(sys.path)", env=env, cwd=run_dir)
    assert where.splitlines()[0].startswith(str(own_site)), where  # the installed wheel, not the source tree
    assert str(ROOT / "src") not in where
    modetune = env_dir / "bin" / "modetune"
    assert _run(modetune, "--version", env=env, cwd=run_dir).strip() == f"modetune {__version__}"
    assert "trainable" in _run(modetune, "params", env=env, cwd=run_dir).lower()
    listing = _run(modetune, "config", "list", env=env, cwd=run_dir)
    assert "paper_llama7b" in listing and "deepspeed_zero3" in listing and str(own_site) in listing
    assert _run(modetune, "config", "show", "default", env=env, cwd=run_dir) == \
        (ROOT / "src/modetune/configs/default.yaml").read_text()
    out = _run(modetune, "train", "--config", "default", "--max-steps", "2", "--data", "builtin:arithmetic:16",
               "--batch-size", "2", "--micro-batch-size", "2", "--cutoff-len", "64", "--val-size", "0",
               "--report-to", "none", "--save-steps", "100", "--output-dir", run_dir / "run", env=env, cwd=run_dir)
    assert (run_dir / "run" / "adapter" / "mod_model.safetensors").exists(), out
