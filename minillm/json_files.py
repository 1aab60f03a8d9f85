"""Reading a JSON file that must hold one object (config.json, vocab.json), with errors that
say which file, what was wrong, and what was expected, in the caller's own error type."""
from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: Path, error: type[Exception], expected: str) -> dict:
    """The JSON object in `path`, or `error` naming the file and the problem.
    expected: what the file should hold, for the message (e.g. "a JSON object token -> id")."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot read it: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
                    f"expected {expected} in UTF-8") from None
    if not text.strip():
        raise error(f"{path} is empty; expected {expected}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno}); "
                    f"expected {expected}") from None
    except RecursionError:
        raise error(f"{path}: its JSON is nested too deeply; expected {expected}") from None
    if not isinstance(value, dict):
        raise error(f"{path} must hold {expected}, got a JSON {json_type(value)}")
    return value


def json_type(value) -> str:
    """JSON's name for the type of a parsed value."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
