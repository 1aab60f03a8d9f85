"""The 'compiling ...' line: which numba cache files a kernel module needs, and when it is said."""
from pathlib import Path

from minillm.kernels import compile_notice

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def test_lists_the_separately_compiled_kernels():
    names = [name for name, _ in compile_notice._cached_kernels(KERNELS / "fused_cpu.py")]
    assert "_gelu_flat" in names and "_cross_entropy_rows" in names
    assert "exp_f32" not in names                     # inline="always": compiled into its callers


def test_an_empty_cache_means_compiling_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert compile_notice.cached_kernels_missing(KERNELS / "fused_cpu.py", ("_gelu_flat",))
    compile_notice.announce_compilation("model kernels", {KERNELS / "fused_cpu.py": None})
    assert "compiling model kernels, first run only" in capsys.readouterr().err


def test_a_fresh_index_file_means_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    source = KERNELS / "fused_cpu.py"
    line = dict(compile_notice._cached_kernels(source))["_gelu_flat"]
    import sys
    (tmp_path / f"fused_cpu._gelu_flat-{line}.py{sys.version_info.major}{sys.version_info.minor}.nbi").touch()
    assert not compile_notice.cached_kernels_missing(source, ("_gelu_flat",))
    compile_notice.announce_compilation("model kernels", {source: ("_gelu_flat",)})
    assert capsys.readouterr().err == ""
