"""Readers and writers: native JSONL, the MindGuard-testset schema (JSONL/parquet/CSV/hub), and
the authored plain-text source format. `load_conversations` picks the reader from the file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..conversation import Conversation
from ..errors import DataError
from ._jsonl import open_checked, read_jsonl
from .authored import parse_authored, read_authored
from .native import read_native, write_native
from .testset import HUB_PREFIX, read_testset, write_testset

FORMATS = ("auto", "native", "testset", "authored")


def detect_format(path: str | Path) -> str:
    """Guess the format: `hub:` names, .parquet and .csv are testset; .txt is authored; JSONL is
    testset if its first record has a `prompt`, else native."""
    s = str(path)
    if s.startswith(HUB_PREFIX):
        return "testset"
    p = open_checked(s)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".csv"):
        return "testset"
    if suffix == ".txt":
        return "authored"
    for _, obj in read_jsonl(p):
        return "testset" if "prompt" in obj else "native"
    raise DataError(f"{p}: the file has no records")  # pragma: no cover - read_jsonl raises first


def load_conversations(path: str | Path, fmt: str = "auto") -> list[Conversation]:
    """Load conversations from any supported file."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "native":
        return read_native(path)
    if fmt == "authored":
        return read_authored(path)
    return read_testset(path)


def save_conversations(path: str | Path, conversations: Iterable[Conversation], fmt: str = "native") -> int:
    """Write conversations as native JSONL or as testset-schema rows."""
    if fmt == "native":
        return write_native(path, conversations)
    if fmt == "testset":
        return write_testset(path, conversations)
    raise DataError(f"cannot write format {fmt!r}; allowed: native, testset")


__all__ = [
    "FORMATS", "detect_format", "load_conversations", "save_conversations", "parse_authored",
    "read_authored", "read_native", "write_native", "read_testset", "write_testset",
]


def conversations_from_text(text: str, source: str = "<stdin>") -> list[Conversation]:
    """Parse conversations given inline: a JSON object with `messages` (OpenAI style), a bare JSON
    list of messages, or JSONL with one such object per line."""
    import json

    from ..conversation import Conversation as _C

    text = text.strip()
    if not text:
        raise DataError(f"{source}: no input (expected a conversation as JSON)")
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{source}:{n}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    out = []
    for n, doc in enumerate(docs, 1):
        if isinstance(doc, list):
            doc = {"messages": doc}
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
            raise DataError(f"{source}: conversation {n} must be an object with a 'messages' list or a list of messages")
        if not doc["messages"]:
            raise DataError(f"{source}: conversation {n} is empty (no messages)")
        try:
            out.append(_C.from_dicts(str(doc.get("id", f"conversation-{n}")), doc["messages"], doc.get("meta"), doc.get("labels")))
        except DataError as exc:
            raise DataError(f"{source}: conversation {n}: {exc}") from None
    return out
