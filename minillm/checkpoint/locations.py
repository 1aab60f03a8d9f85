"""Where minillm's files are: the bundled ones, and the models `minillm download` fetches.

Bundled files (GPT-2's vocabulary, the default Shakespeare model, the reference model) live in
the repository's top-level ``weights/`` folder. An installed wheel carries the same files as
package data in ``minillm/weights/`` (see pyproject.toml), so :func:`bundled_dir` looks there
first and falls back to the checkout: the same call works in a checkout, an editable install
and a wheel.

Downloads never go into the installation, which may be read-only or shared; they go to a user
cache, found the way huggingface_hub finds its own:

    $MINILLM_HOME/<name>/                      if MINILLM_HOME is set, else
    $HF_HUB_CACHE/minillm/<name>/              if HF_HUB_CACHE is set, else
    $HF_HOME/hub/minillm/<name>/               HF_HOME defaults to $XDG_CACHE_HOME/huggingface,
                                               and XDG_CACHE_HOME to ~/.cache

The environment is read at each call (huggingface_hub reads it once, at import), so a test or a
user can redirect the cache at any time.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]        # minillm/
INSTALLED_WEIGHTS = PACKAGE_DIR / "weights"              # package data of a wheel
CHECKOUT_WEIGHTS = PACKAGE_DIR.parent / "weights"        # the repository's weights/


def bundled_dir() -> Path:
    """The folder of bundled files: minillm/weights/ when installed from a wheel, else the
    checkout's weights/ (a checkout has no minillm/weights/)."""
    return INSTALLED_WEIGHTS if INSTALLED_WEIGHTS.is_dir() else CHECKOUT_WEIGHTS


def downloads_dir() -> Path:
    """The folder that holds one sub-folder per downloaded model (see the module docstring)."""
    if os.environ.get("MINILLM_HOME"):
        return _expand(os.environ["MINILLM_HOME"])
    return hf_hub_cache() / "minillm"


def hf_hub_cache() -> Path:
    """huggingface_hub's cache folder, resolved from the environment as its constants.py does."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):    # the second is the legacy name
        if os.environ.get(variable):
            return _expand(os.environ[variable])
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    hf_home = os.environ.get("HF_HOME") or os.path.join(xdg_cache, "huggingface")
    return _expand(hf_home) / "hub"


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))
