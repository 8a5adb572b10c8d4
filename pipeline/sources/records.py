"""Reading untrusted record files, one line at a time, so that no line can stop a stage.

Every source reads its files through `capped_lines` and, for JSON, `parse_json`; what they cannot use becomes a
`BadRecord` with one of these reasons, which the source records as a rejection:

    line_too_long    a line longer than `max_bytes` (read in bounded pieces, never held whole)
    invalid_utf8     bytes that are not UTF-8 (counted, never replaced)
    malformed_json   not JSON, or JSON's non-standard NaN/Infinity
    json_too_deep    nesting deeper than Python's parser can take
    number_too_long  an integer of more than `MAX_NUMBER_DIGITS` digits, or a float that overflows
    lone_surrogate   a string holding half of a UTF-16 surrogate pair (`"\\ud800"`), which no UTF-8 file can hold
    nul_character    a string holding U+0000, which the HDF5 shards cannot store
    wrong_type       a field of the wrong JSON type (detail: where, what it is, what was expected)
    missing_field    a required field absent (detail: where)
    not_an_object    a JSONL line whose JSON is not an object (`json_objects`)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Iterator

MAX_LINE_BYTES = 64 * 1024 * 1024  # far above a twarc2 page of 100 tweets with their expansions (~1 MB)
MAX_NUMBER_DIGITS = 100  # tweet ids have 19 digits; a longer integer is an attack or a corruption
SKIP_BYTES = 1 << 20  # bytes read at a time while skipping the rest of an overlong line


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def capped_lines(path: str | Path, max_bytes: int | None = None) -> Iterator[tuple[int, str | BadRecord]]:
    """(1-based line number, the line decoded as strict UTF-8 without its newline, or a BadRecord) per line.

    Lines end at "\\n" only (a stray "\\r" inside a line does not split it). Memory stays within `max_bytes`
    whatever the file holds (`max_bytes` defaults to `MAX_LINE_BYTES`).
    """
    max_bytes = max_bytes or MAX_LINE_BYTES
    with open(path, "rb") as f:
        number = 0
        while line := f.readline(max_bytes + 1):
            number += 1
            if len(line) > max_bytes:
                size = len(line)
                while not line.endswith(b"\n") and (line := f.readline(SKIP_BYTES)):
                    size += len(line)
                yield number, BadRecord("line_too_long", f"{size} bytes > {max_bytes}")
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, BadRecord("invalid_utf8", f"byte {err.start} of the line: {err.reason}")
                continue
            yield number, text.rstrip("\n").rstrip("\r")


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise BadRecord("number_too_long", f"an integer of {len(digits)} digits")
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRecord("number_too_long", f"{text[:40]} overflows a float")
    return value


def _constant(name: str):
    raise BadRecord("malformed_json", f"{name} is not JSON")


def parse_json(text: str):
    """The JSON value of `text`, or BadRecord for what Python's parser refuses or would take badly."""
    try:
        return json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise BadRecord("json_too_deep", "nesting too deep for the parser") from None
    except json.JSONDecodeError as err:
        raise BadRecord("malformed_json", str(err)) from None


def json_objects(lines: Iterable[tuple[str, str | BadRecord]], log) -> Iterator[tuple[str, dict]]:
    """(where, object) for each JSONL line that holds a JSON object; every other non-blank line (a BadRecord
    from `capped_lines`, bad JSON, JSON that is not an object) is rejected into `log` (a StageLog) by `where`."""
    for where, line in lines:
        if isinstance(line, BadRecord):
            log.reject(where, line.reason, line.detail)
            continue
        if not line.strip():
            continue
        try:
            obj = parse_json(line)
        except BadRecord as err:
            log.reject(where, err.reason, err.detail)
            continue
        if not isinstance(obj, dict):
            log.reject(where, "not_an_object", f"the line's JSON is {json_type(obj)}")
            continue
        yield where, obj


def string_fault(value, where: str = "") -> BadRecord | None:
    """The first string in `value` (nested dicts and lists too) that cannot be stored, or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return BadRecord("nul_character", f"{where or 'a string'} holds U+0000")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return BadRecord("lone_surrogate", f"{where or 'a string'}: U+{ord(value[err.start]):04X} at {err.start}")
    elif isinstance(value, dict):
        for key, item in value.items():
            # The path names the key printably: a detail must be writable whatever the key holds.
            path = f"{where}.{key}" if where else str(key)
            path = path.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
            if fault := string_fault(key, f"a key of {where or 'the record'}") or string_fault(item, path):
                return fault
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if fault := string_fault(item, f"{where}[{index}]"):
                return fault
    return None


JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
                   float: "a number", type(None): "null"}


def json_type(value) -> str:
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def field(obj: dict, key: str, kind: type | tuple[type, ...], where: str, required: bool = False, default=None):
    """`obj[key]` if it is of `kind` (a bool never counts as a number); `default` when absent or null (or
    BadRecord `missing_field` when `required`); BadRecord `wrong_type` otherwise."""
    path = f"{where}.{key}" if where else key
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise BadRecord("missing_field", f"{path} is missing")
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(JSON_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise BadRecord("wrong_type", f"{path} is {json_type(value)}, expected {expected}")
    return value


def objects(obj: dict, key: str, where: str) -> list[dict]:
    """`obj[key]` as a list of objects ([] when absent or null), or BadRecord `wrong_type`."""
    items = field(obj, key, list, where, default=[])
    path = f"{where}.{key}" if where else key
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRecord("wrong_type", f"{path}[{index}] is {json_type(item)}, expected an object")
    return items
