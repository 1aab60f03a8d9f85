"""A built wheel, installed outside the checkout, works: `minillm generate` on the bundled model,
`Tokenizer.gpt2()`, and nothing but bytecode caches written into the installation.

The wheel is built from a copy of the source tree (an in-tree build would reuse a stale
build/ folder). The fresh venv gets its dependencies by a .pth line pointing at this
interpreter's site-packages, which works offline and takes seconds; a .pth line adds a folder
to sys.path without running the .pth files in it, so the checkout's editable install stays out.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
# Not part of the source a wheel is built from: environments, build output, a training run's bulk.
SKIPPED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".hypothesis", "data", "notebooks",
                                 "optimizer.safetensors", "tokens", "*.part")
MAX_WHEEL_BYTES = 40_000_000


def run(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (REPO_ROOT / "weights" / "shakespeare" / "model.safetensors").is_file():
        pytest.skip("the bundled model weights/shakespeare/ is not there")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO_ROOT, source, ignore=SKIPPED)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", work / "dist", source], cwd=work)
    (built,) = (work / "dist").glob("minillm-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    site_packages = Path(run([venv / "bin" / "python", "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             cwd=venv).stdout.strip())
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
         "--no-compile", "-q", wheel], cwd=venv)
    return venv


def test_wheel_holds_the_package_data_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    data = sorted(n for n in names if n.startswith("minillm/weights/"))
    assert data == sorted(f"minillm/weights/{f}" for f in [
        "gpt2/README.md", "gpt2/encoder.json", "gpt2/vocab.bpe",
        "reference/config.json", "reference/model.safetensors", "reference/reference.json",
        "reference/reference.npz",
        "shakespeare/README.md", "shakespeare/config.json", "shakespeare/merges.txt",
        "shakespeare/model.safetensors", "shakespeare/vocab.json"])
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith(".nbi")]
    assert "minillm/kernels/__init__.py" in names
    assert wheel.stat().st_size < MAX_WHEEL_BYTES


def test_installed_cli_and_tokenizer_work_outside_the_checkout(venv, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "MINILLM_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": "", "OPENBLAS_NUM_THREADS": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    installed = Path(run([venv / "bin" / "python", "-c", "import minillm; print(minillm.__file__)"],
                         cwd=tmp_path, env=env).stdout.strip()).parent
    assert REPO_ROOT not in installed.parents
    files_before = set(installed.rglob("*"))

    generated = run([venv / "bin" / "minillm", "generate", "--max-new-tokens", "5", "ROMEO:"],
                    cwd=tmp_path, env=env)
    assert generated.stdout.startswith("ROMEO:") and len(generated.stdout) > len("ROMEO:")
    assert "compiling tokenizer kernels" in generated.stderr      # a fresh install: numba compiles
    code = ("from minillm.tokenizer.bpe import Tokenizer; from minillm.checkpoint.weights import "
            "resolve_model_path as r; print(Tokenizer.gpt2().encode('Hello world'), r('shakespeare'))")
    tokenized = run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env)
    assert tokenized.stdout.startswith("[15496, 995] ")
    assert Path(tokenized.stdout.split()[-1]).parent == installed / "weights"

    # Python's bytecode and numba's compiled kernels live in __pycache__ beside the code, by design.
    written = {path for path in set(installed.rglob("*")) - files_before
               if "__pycache__" not in path.parts}
    assert not written, f"written into the installation: {sorted(written)}"
