"""The benchmarks' report of numpy's OpenBLAS kernels (benchmarks/blas_kernels.py): what
threadpoolctl says OpenBLAS chose, and whether OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE chose it."""
import importlib.util
import sys
from pathlib import Path

import threadpoolctl

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "blas_kernels.py"
_SPEC = importlib.util.spec_from_file_location("blas_kernels_under_test", _PATH)
blas_kernels = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = blas_kernels
_SPEC.loader.exec_module(blas_kernels)


def _openblas(architecture):
    return [{"internal_api": "openblas", "version": "0.3.31", "architecture": architecture}]


def test_names_the_kernels_and_the_variables_that_chose_them(monkeypatch):
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: _openblas("Haswell"))
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    assert blas_kernels.openblas_kernels() == (
        "OpenBLAS 0.3.31, Haswell kernels (OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE unset)")


def test_own_choice_when_both_variables_are_unset(monkeypatch):
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: _openblas("SkylakeX"))
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    assert blas_kernels.openblas_kernels() == (
        "OpenBLAS 0.3.31, SkylakeX kernels (OPENBLAS_CORETYPE unset, OPENBLAS_L2_SIZE unset)")


def test_another_blas_is_said_to_be_one(monkeypatch):
    monkeypatch.setattr(threadpoolctl, "threadpool_info",
                        lambda: [{"internal_api": "mkl", "version": "2025"}])
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "512")
    assert blas_kernels.openblas_kernels().startswith("numpy's BLAS is not OpenBLAS (")


def test_this_process_reports_what_threadpoolctl_sees():
    architectures = [lib.get("architecture") for lib in threadpoolctl.threadpool_info()
                     if lib.get("internal_api") == "openblas"]
    report = blas_kernels.openblas_kernels()
    if architectures:
        assert f", {architectures[0]} kernels (" in report
    else:
        assert report.startswith("numpy's BLAS is not OpenBLAS")
