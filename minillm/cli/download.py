"""`minillm download NAME`: fetch a released GPT-2 into the user cache (see
minillm/checkpoint/locations.py for where that is, and minillm/checkpoint/download.py)."""
from __future__ import annotations

import sys

from minillm.checkpoint.download import (DEFAULT_ENDPOINT, DEFAULT_TIMEOUT_S, HUB_REPOS, DownloadError,
                                         download)


def add_arguments(parser) -> None:
    parser.add_argument("name", choices=list(HUB_REPOS), help="which GPT-2 to download")
    parser.add_argument("--dir", default=None, metavar="DIR",
                        help="the files go to DIR/NAME/ (default: the user cache, $MINILLM_HOME or "
                             "huggingface_hub's cache + /minillm)")
    parser.add_argument("--endpoint", default=None, metavar="URL",
                        help=f"hub to download from (default: $HF_ENDPOINT or {DEFAULT_ENDPOINT})")
    parser.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="how long to wait for the hub to answer (default: %(default)s)")


def run(args) -> int:
    try:
        model_dir = download(args.name, args.dir, args.endpoint, args.revision, args.timeout)
    except DownloadError as error:
        print(f"minillm download: {error}", file=sys.stderr)
        return 1
    model = args.name if args.dir is None else model_dir
    print(f"{args.name} is ready in {model_dir}: minillm generate --model {model} \"Hello\"")
    return 0
