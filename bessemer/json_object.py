"""JSON that must be an object (a checkpoint's model.json, a config.json, a safetensors header): parsed, or
refused in one line naming where it came from and the fix."""

from __future__ import annotations

import json
from pathlib import Path

from bessemer.errors import BessemerError


def parse_json_object(raw: str | bytes, where: str | Path, fix: str, error: type[BessemerError]) -> dict:
    """`raw` (UTF-8 bytes or text) as a dict; invalid JSON or any other value raises `error`: 'WHERE: ...; FIX'."""
    try:
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # a decode error's line and column help whoever edits the file; the others' text does not
        reason = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise error(f"{where}: not valid JSON ({reason}); {fix}") from exc
    if not isinstance(value, dict):
        raise error(f"{where}: not a JSON object; {fix}")
    return value


def read_json_object(path: str | Path, fix: str, error: type[BessemerError]) -> dict:
    """The JSON object in file `path` (see parse_json_object)."""
    return parse_json_object(Path(path).read_bytes(), path, fix, error)
