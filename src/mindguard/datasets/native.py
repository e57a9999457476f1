"""Our native format: JSONL, one conversation per line, a label on each user turn.

`{"id": str, "messages": [{"role", "content", "label"?, "votes"?, "rationale"?,
"hard_negative"?, "rows"?}], "meta": {...}}`. For convenience the reader also accepts a top-level
`"labels"` list (one label per user turn, in order), as in the shared development set.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..conversation import Conversation
from ..errors import DataError
from ._jsonl import read_jsonl, write_jsonl


def read_native(path: str | Path) -> list[Conversation]:
    """Read conversations from a native JSONL file; errors name the file and line."""
    out: list[Conversation] = []
    ids: set[str] = set()
    for n, obj in read_jsonl(path):
        if "messages" not in obj:
            raise DataError(f"{path}:{n}: a conversation needs a 'messages' list")
        try:
            meta = dict(obj.get("meta") or {})
            if obj.get("notes") and "notes" not in meta:
                meta["notes"] = obj["notes"]
            conv = Conversation.from_dicts(
                str(obj.get("id", f"line{n}")), obj["messages"], meta, obj.get("labels")
            )
        except DataError as exc:
            raise DataError(f"{path}:{n}: {exc}") from None
        if conv.id in ids:
            raise DataError(f"{path}:{n}: duplicate conversation id {conv.id!r}")
        ids.add(conv.id)
        out.append(conv)
    return out


def write_native(path: str | Path, conversations: Iterable[Conversation]) -> int:
    """Write conversations as native JSONL; returns how many were written."""
    return write_jsonl(path, (c.to_dict() for c in conversations))
