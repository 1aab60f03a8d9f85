"""`minillm download gpt2`: fetch a released GPT-2 from the Hugging Face hub into a user cache.

The files go to <cache>/<name>/, where <cache> is $MINILLM_HOME, else huggingface_hub's cache
folder + /minillm (see minillm/checkpoint/locations.py), never into the installed package.

Each file is fetched with huggingface_hub's own pieces, following the hub's protocol:

    HEAD {endpoint}/{repo}/resolve/{revision}/{file}   -> size, checksum (ETag), and where the
                                                          bytes are (a CDN redirect for big files)
    GET  that location, with `Range: bytes=N-`         -> the bytes after the N we already have

The bytes go to `<file>.<checksum prefix>.part` next to the target, so an interrupted download
resumes where it stopped the next time (a partial file of another version is discarded). When
complete, the file is checked against the checksum the hub advertised -- the sha256 of a large
(LFS) file, the git blob sha1 of a small one -- and only then renamed into place; on a mismatch
it is deleted and the download fails. Unreachable hub: one short attempt, no retry loop, and a
message saying what to fetch by hand and where to put it.

(huggingface_hub's hf_hub_download is not used as a whole because it deletes partial downloads
instead of resuming them, and does not check a fresh download's sha256.)
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from minillm.model.config import GPT2_SIZES

# Each released GPT-2 (the sizes of config.GPT2_SIZES) -> its hub repository (the old bare ids
# like "gpt2" redirect there).
HUB_REPOS = {name: f"openai-community/{name}" for name in GPT2_SIZES}
FILES = ("config.json", "model.safetensors")     # the small one first: a quick reachability check
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT_S = 5.0                          # for the HEAD request: fail fast when offline
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


class DownloadError(RuntimeError):
    """The download could not be completed; the message says why and what to do."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the checksum the hub advertised."""


# ------------------------------------------------------------------------------------------------
def download(name: str, weights_dir: str | Path | None = None, endpoint: str | None = None,
             revision: str = "main", timeout: float = DEFAULT_TIMEOUT_S, log=None) -> Path:
    """Download config.json and model.safetensors of `name` into <weights_dir>/<name>/.

    name: gpt2, gpt2-medium, gpt2-large, gpt2-xl (or the hub id, e.g. openai-community/gpt2).
    weights_dir: default the user cache of locations.downloads_dir(), where
        `GPT2.from_pretrained(name)` looks.
    endpoint: default $HF_ENDPOINT, else https://huggingface.co.
    Returns the model directory.
    """
    name, repo_id = resolve_name(name)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    target_dir = Path(weights_dir if weights_dir is not None else _default_weights_dir()) / name
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    hint = _manual_hint(repo_id, revision, endpoint, target_dir)
    if _offline_mode():
        raise DownloadError(f"HF_HUB_OFFLINE is set, so nothing can be downloaded.\n{hint}")
    for filename in FILES:
        download_file(repo_id, filename, target_dir, endpoint, revision, timeout, log, hint)
    return target_dir


def resolve_name(name: str) -> tuple[str, str]:
    """(local name, hub repo id) for a model name or hub id."""
    for local_name, repo_id in HUB_REPOS.items():
        if name in (local_name, repo_id):
            return local_name, repo_id
    raise DownloadError(f"unknown model {name!r}: expected one of {', '.join(HUB_REPOS)}")


def download_file(repo_id: str, filename: str, target_dir: Path, endpoint: str, revision: str,
                  timeout: float, log, hint: str = "") -> Path:
    """Fetch one file into target_dir (resuming a partial one), verify it, move it into place."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        metadata = get_hf_file_metadata(url, timeout=timeout)    # one HEAD request, no retries
    except Exception as error:     # connection refused, timeout, DNS, HTTP 4xx/5xx: all fatal here
        raise DownloadError(f"cannot get {url}: {type(error).__name__}: {_first_line(error)}.\n{hint}") from error
    checksum = metadata.etag or ""
    if not (_SHA256.fullmatch(checksum) or _GIT_SHA1.fullmatch(checksum)):
        raise DownloadError(f"{url} advertises no sha256 or git sha1 checksum (ETag {metadata.etag!r}), "
                            "so the download cannot be verified")

    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / filename
    if target.is_file() and file_checksum(target, checksum) == checksum:
        log(f"{target}: already downloaded, checksum ok")
        return target
    partial = partial_path(target_dir, filename, checksum)
    _fetch_resumable(metadata.location, partial, metadata.size, filename, hint)
    actual = file_checksum(partial, checksum)
    if actual != checksum:
        partial.unlink()
        raise ChecksumError(f"{filename} from {url} is corrupt: its {_checksum_kind(checksum)} is {actual} "
                            f"but the hub advertises {checksum}. The bad file was deleted; run the "
                            "command again to download it afresh.")
    os.replace(partial, target)
    log(f"{target}: downloaded {_size_text(target)}, {_checksum_kind(checksum)} ok")
    return target


def partial_path(target_dir: Path, filename: str, checksum: str) -> Path:
    """Where the bytes of an unfinished download of this version of the file are kept."""
    return Path(target_dir) / f"{filename}.{checksum[:16]}.part"


def file_checksum(path: Path, like: str) -> str:
    """The file's checksum of the kind `like` is: sha256 (64 hex digits) or git blob sha1 (40)."""
    if _SHA256.fullmatch(like):
        digest = hashlib.sha256()
    else:   # git hashes a blob as sha1(b"blob <size>\0" + content)
        digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
def _fetch_resumable(url: str, partial: Path, size: int | None, filename: str, hint: str) -> None:
    """Append the missing bytes of the file at `url` to `partial` (Range request, progress bar)."""
    from huggingface_hub.file_download import http_get

    for stale in partial.parent.glob(f"{filename}.*.part"):     # an older version's bytes
        if stale != partial:
            stale.unlink()
    resume_size = partial.stat().st_size if partial.exists() else 0
    if size is not None and resume_size > size:                 # cannot be a prefix of the file
        partial.unlink()
        resume_size = 0
    try:
        with open(partial, "ab") as f:
            http_get(url, f, resume_size=resume_size, expected_size=size, displayed_filename=filename)
    except Exception as error:
        kept = partial.stat().st_size if partial.exists() else 0
        raise DownloadError(f"downloading {filename} from {url} failed: {type(error).__name__}: "
                            f"{_first_line(error)}. {kept} bytes are kept in {partial}; run the "
                            f"command again to resume.\n{hint}") from error


def _checksum_kind(checksum: str) -> str:
    return "sha256" if _SHA256.fullmatch(checksum) else "git sha1"


def _size_text(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size} bytes"


def _manual_hint(repo_id: str, revision: str, endpoint: str, target_dir: Path) -> str:
    return (f"To install the model by hand, download {' and '.join(FILES)} from "
            f"{endpoint}/{repo_id}/tree/{revision} and put them in {target_dir}/ ; to use a "
            "mirror, pass --endpoint URL or set HF_ENDPOINT.")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _offline_mode() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in ("1", "true", "yes", "on")


def _default_weights_dir() -> Path:
    from minillm.checkpoint.locations import downloads_dir

    return downloads_dir()
