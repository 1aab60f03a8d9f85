"""`minillm download`, for real, against a local server that speaks the hub's protocol.

The server answers what huggingface_hub asks: HEAD/GET {endpoint}/{repo}/resolve/{rev}/{file}
with X-Repo-Commit and ETag (git sha1) for small files, and for the LFS file a 302 to a second
"CDN" server carrying X-Linked-Etag (the sha256) and X-Linked-Size; the CDN honours Range.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from minillm.checkpoint.download import ChecksumError, DownloadError, download, partial_path
from minillm.model.config import GPT2Config
from minillm.model.params import params_to_hf, random_params

REPO = "openai-community/gpt2"
COMMIT = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
TINY = GPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=1, n_head=2)


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, bytes]:
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("tiny") / "model.safetensors"
    save_file(params_to_hf(random_params(TINY, seed=3)), str(path))
    config = json.dumps({"model_type": "gpt2", **TINY.to_dict()}).encode()
    return {"config.json": config, "model.safetensors": path.read_bytes()}


class FakeHub:
    """A hub and a CDN on 127.0.0.1. `files` is what the hub advertises (checksums, sizes);
    `served` is what the CDN sends (set it to other bytes to simulate corruption)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.served = dict(files)
        self.honour_range = True
        self.requests: list[tuple[str, str, str | None]] = []   # (method, path, Range header)
        self.hub = self._start(self._hub_handler)
        self.cdn = self._start(self._cdn_handler)
        self.endpoint = f"http://127.0.0.1:{self.hub.server_port}"

    def _start(self, handler_for) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for())
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server

    def close(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def lfs_sha256(self, filename: str) -> str:
        return hashlib.sha256(self.files[filename]).hexdigest()

    def gets(self, prefix: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and r[1].startswith(prefix)]

    def _hub_handler(self):
        hub = self

        class Handler(_QuietHandler):
            def do_HEAD(self):
                self._resolve()

            def do_GET(self):
                self._resolve(send_body=True)

            def _resolve(self, send_body=False):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                prefix = f"/{REPO}/resolve/main/"
                filename = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if filename not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.files[filename]
                if filename.endswith(".safetensors"):     # LFS: redirect to the CDN
                    sha = hub.lfs_sha256(filename)
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{hub.cdn.server_port}/lfs/{filename}")
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("ETag", f'"{git_sha1(b"pointer")}"')
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", f'"{git_sha1(data)}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

        return Handler

    def _cdn_handler(self):
        hub = self

        class Handler(_QuietHandler):
            def do_HEAD(self):
                self._serve(send_body=False)

            def do_GET(self):
                self._serve(send_body=True)

            def _serve(self, send_body):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                data = hub.served[self.path.removeprefix("/lfs/")]
                start = 0
                if self.headers.get("Range") and hub.honour_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if send_body:
                    self.wfile.write(data[start:])

        return Handler


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module", autouse=True)
def hub_env(tmp_path_factory):
    """Keep huggingface_hub inside a temporary HF_HOME, online, silent, and away from any proxy."""
    from huggingface_hub.utils import _http

    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        env.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        env.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env.delenv("HF_HUB_OFFLINE", raising=False)
        env.delenv("HF_ENDPOINT", raising=False)
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.delenv(proxy, raising=False)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        _http.close_session()      # the shared client reads the proxy settings when it is created
        yield
        _http.close_session()


@pytest.fixture
def hub(model_files):
    server = FakeHub(model_files)
    yield server
    server.close()


def quiet(_message):
    pass


# ------------------------------------------------------------------------------------------------
def test_download_then_the_model_loads(hub, tmp_path, model_files):
    model_dir = download("gpt2", tmp_path / "weights", endpoint=hub.endpoint, log=quiet)

    assert model_dir == tmp_path / "weights" / "gpt2"
    for filename, data in model_files.items():
        assert (model_dir / filename).read_bytes() == data
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]

    from minillm.model.gpt2 import GPT2
    model = GPT2.from_pretrained(model_dir)
    expected = random_params(TINY, seed=3)
    assert model.config == TINY
    np.testing.assert_array_equal(model.params.wte, expected.wte)
    np.testing.assert_array_equal(model.params.blocks[0].mlp_fc_weight, expected.blocks[0].mlp_fc_weight)


def test_second_download_checks_and_skips(hub, tmp_path):
    download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)
    hub.requests.clear()
    messages = []
    download("gpt2", tmp_path, endpoint=hub.endpoint, log=messages.append)
    assert [r[0] for r in hub.requests] == ["HEAD", "HEAD"]      # metadata only, no bytes
    assert all("already downloaded" in m for m in messages)


def test_hub_id_is_an_alias(hub, tmp_path):
    assert download(REPO, tmp_path, endpoint=hub.endpoint, log=quiet) == tmp_path / "gpt2"


def test_interrupted_download_resumes_with_a_range_request(hub, tmp_path, model_files):
    data = model_files["model.safetensors"]
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    half = len(data) // 2
    partial = partial_path(model_dir, "model.safetensors", hub.lfs_sha256("model.safetensors"))
    partial.write_bytes(data[:half])                    # what an interrupted run left behind

    download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)

    assert (model_dir / "model.safetensors").read_bytes() == data
    assert not partial.exists()
    assert [r[2] for r in hub.gets("/lfs/")] == [f"bytes={half}-"]


def test_resume_against_a_server_ignoring_range_starts_over(hub, tmp_path, model_files):
    data = model_files["model.safetensors"]
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    partial_path(model_dir, "model.safetensors", hub.lfs_sha256("model.safetensors")).write_bytes(data[:100])
    hub.honour_range = False                            # answers 200 with the whole file

    download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)

    assert (model_dir / "model.safetensors").read_bytes() == data


def test_partial_file_of_another_version_is_discarded(hub, tmp_path, model_files):
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    stale = partial_path(model_dir, "model.safetensors", "0" * 64)
    stale.write_bytes(b"bytes of an older upload")

    download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)

    assert not stale.exists()
    assert (model_dir / "model.safetensors").read_bytes() == model_files["model.safetensors"]
    assert [r[2] for r in hub.gets("/lfs/")] == [None]


def test_corrupted_file_is_rejected_and_deleted(hub, tmp_path, model_files):
    good = model_files["model.safetensors"]
    hub.served["model.safetensors"] = good[:-1] + bytes([good[-1] ^ 0xFF])   # same size, one bad byte

    with pytest.raises(ChecksumError, match=r"model\.safetensors .* is corrupt: its sha256 is [0-9a-f]{64} "
                                            r"but the hub advertises " + hub.lfs_sha256("model.safetensors")):
        download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)

    model_dir = tmp_path / "gpt2"
    assert not (model_dir / "model.safetensors").exists()
    assert list(model_dir.glob("*.part")) == []


def test_corrupted_existing_file_is_downloaded_again(hub, tmp_path, model_files):
    download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)
    target = tmp_path / "gpt2" / "model.safetensors"
    target.write_bytes(b"garbage")
    download("gpt2", tmp_path, endpoint=hub.endpoint, log=quiet)
    assert target.read_bytes() == model_files["model.safetensors"]


def test_unreachable_endpoint_fails_fast_with_instructions(tmp_path):
    closed_port = _free_port()
    start = time.perf_counter()
    with pytest.raises(DownloadError) as error:
        download("gpt2-medium", tmp_path, endpoint=f"http://127.0.0.1:{closed_port}", log=quiet)
    assert time.perf_counter() - start < 3
    message = str(error.value)
    assert "ConnectError" in message
    assert "config.json and model.safetensors" in message
    assert f"/{HUB_REPO_MEDIUM}/tree/main" in message
    assert str(tmp_path / "gpt2-medium") in message
    assert not (tmp_path / "gpt2-medium").exists()


def test_offline_mode_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="(?s)HF_HUB_OFFLINE is set.*download config.json and model.safetensors"):
        download("gpt2", tmp_path, endpoint="http://127.0.0.1:9", log=quiet)


def test_missing_file_on_the_hub_is_reported(model_files, tmp_path):
    server = FakeHub({"config.json": model_files["config.json"]})
    try:
        with pytest.raises(DownloadError, match=r"cannot get .*/resolve/main/model\.safetensors"):
            download("gpt2", tmp_path, endpoint=server.endpoint, log=quiet)
    finally:
        server.close()


def test_unknown_model_name(tmp_path):
    with pytest.raises(DownloadError, match="unknown model 'gpt3': expected one of gpt2, gpt2-medium"):
        download("gpt3", tmp_path)


def test_cli_download(hub, tmp_path, capsys):
    from minillm.cli import main

    assert main(["download", "gpt2", "--dir", str(tmp_path), "--endpoint", hub.endpoint]) == 0
    assert (tmp_path / "gpt2" / "model.safetensors").is_file()
    assert "is ready in" in capsys.readouterr().out


def test_cli_download_unreachable_exits_1(tmp_path, capsys):
    from minillm.cli import main

    code = main(["download", "gpt2", "--dir", str(tmp_path), "--endpoint", f"http://127.0.0.1:{_free_port()}"])
    assert code == 1
    assert "minillm download: cannot get" in capsys.readouterr().err


HUB_REPO_MEDIUM = "openai-community/gpt2-medium"


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ where downloads go
CACHE_VARIABLES = ("MINILLM_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def test_default_download_goes_to_the_user_cache_and_is_found_there(hub, tmp_path, monkeypatch):
    from minillm.checkpoint import weights

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "CHECKOUT_WEIGHTS", tmp_path / "checkout")   # no gpt2/ there
    monkeypatch.chdir(tmp_path)
    model_dir = download("gpt2", endpoint=hub.endpoint, log=quiet)
    assert model_dir == tmp_path / "cache" / "gpt2"
    assert weights.resolve_model_path("gpt2") == model_dir


def test_a_checkout_download_is_still_found_first(tmp_path, monkeypatch):
    from minillm.checkpoint import weights

    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "CHECKOUT_WEIGHTS", tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    for folder in (tmp_path / "weights" / "gpt2", tmp_path / "cache" / "gpt2"):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").touch()
    assert weights.resolve_model_path("gpt2") == tmp_path / "weights" / "gpt2"


@pytest.mark.parametrize("settings, expected", [
    ({"MINILLM_HOME": "mh", "HF_HUB_CACHE": "hc", "HF_HOME": "hh"}, "mh"),
    ({"HF_HUB_CACHE": "hc", "HF_HOME": "hh"}, "hc/minillm"),
    ({"HUGGINGFACE_HUB_CACHE": "legacy", "HF_HOME": "hh"}, "legacy/minillm"),
    ({"HF_HOME": "hh", "XDG_CACHE_HOME": "xdg"}, "hh/hub/minillm"),
    ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/hub/minillm"),
    ({}, "home/.cache/huggingface/hub/minillm"),
])
def test_downloads_dir_follows_huggingface_hub(settings, expected, tmp_path, monkeypatch):
    from minillm.checkpoint.locations import downloads_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in settings.items():
        monkeypatch.setenv(variable, str(tmp_path / value))
    assert downloads_dir() == tmp_path / expected
