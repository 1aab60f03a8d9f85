"""What the course-tooling tests share: the toy repository and a way to run the CLI in-process.

Lives beside the toy repository, so the student release leaves it out with it."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shutil
from pathlib import Path

import pytest

from minillm.cli import assignments as assignments_cli

FIXTURE = Path(__file__).parent / "toyrepo"
REPO = Path(__file__).resolve().parents[2]


def copy_fixture(destination: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, destination, ignore=shutil.ignore_patterns("__pycache__")))


@pytest.fixture
def toy(tmp_path) -> Path:
    return copy_fixture(tmp_path / "toy")


def run_cli(*argv) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="minillm assignments")
    assignments_cli.add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = assignments_cli.run(parser.parse_args([str(a) for a in argv]))
    return code, out.getvalue()


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
