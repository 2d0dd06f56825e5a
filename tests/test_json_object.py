"""The one reader of JSON that must be an object: a dict back, or one line naming the file and the fix."""

from __future__ import annotations

import pytest

from bessemer.errors import CheckpointError, ConversionError
from bessemer.json_object import parse_json_object, read_json_object


def test_an_object_comes_back(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"a": [1, 2], "b": {"c": null}}')
    assert read_json_object(path, "fix it", CheckpointError) == {"a": [1, 2], "b": {"c": None}}


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"a": 1,', "not valid JSON (Expecting property name"),  # line and column kept for the editor
        (b"\xff\xfe{}", "not valid JSON (UnicodeDecodeError)"),
        (b"[" * 100_000, "not valid JSON (RecursionError)"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
    ],
)
def test_anything_else_is_one_line_naming_file_and_fix(tmp_path, raw, reason):
    path = tmp_path / "config.json"
    path.write_bytes(raw)
    with pytest.raises(ConversionError) as info:
        read_json_object(path, "download it again", ConversionError)
    message = str(info.value)
    assert message.startswith(f"{path}: {reason}") and message.endswith("; download it again")
    assert "\n" not in message


def test_where_may_name_a_part_of_a_file():
    with pytest.raises(CheckpointError, match=r"^x.safetensors: header: not a JSON object; get it again$"):
        parse_json_object("7", "x.safetensors: header", "get it again", CheckpointError)
