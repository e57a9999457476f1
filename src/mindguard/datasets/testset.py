"""The MindGuard-testset schema: one row per labelled user turn, conversations recovered from prompts.

Each row has `prompt` (messages ending with the target user turn), `user_message`, `label` and
`annotator_labels`. In the published data rows of one conversation are not always in order, some
prompts appear twice and different conversations can share their first turns, so conversations
are rebuilt from the prompts: a conversation is a *maximal* prompt (no other prompt's proper
prefix) and each row belongs to the first maximal prompt that extends it. Row numbers are kept on
the turns (`Message.rows`) so that testset -> native -> testset gives back the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversation import Conversation, Message
from ..errors import DataError, require
from ..taxonomy import LABELS
from ._jsonl import open_checked, read_jsonl, write_jsonl

HUB_PREFIX = "hub:"


@dataclass(frozen=True)
class TestsetRow:
    """One row of the schema, validated."""

    index: int
    prompt: tuple[tuple[str, str], ...]
    label: str
    annotator_labels: Mapping[str, str]


def _parse_row(index: int, raw: Mapping[str, Any], where: str) -> TestsetRow:
    prompt: Any = raw.get("prompt")
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError:
            raise DataError(f"{where}: 'prompt' is not valid JSON text") from None
    if hasattr(prompt, "tolist"):  # numpy arrays from parquet
        prompt = prompt.tolist()
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of messages")
    msgs: list[tuple[str, str]] = []
    for m in prompt:
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: every prompt message needs 'role' and 'content'")
        try:
            Message(str(m["role"]), m["content"])
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        msgs.append((str(m["role"]), str(m["content"])))
    if msgs[-1][0] != "user":
        raise DataError(f"{where}: the prompt must end with the user turn being labelled")
    label = raw.get("label")
    if label not in LABELS:
        raise DataError(f"{where}: unknown label {label!r}; allowed: {', '.join(LABELS)}")
    ann = raw.get("annotator_labels") or {}
    if isinstance(ann, str):
        try:
            ann = json.loads(ann) if ann.strip() else {}
        except json.JSONDecodeError:
            raise DataError(f"{where}: 'annotator_labels' is not valid JSON text") from None
    if not isinstance(ann, Mapping):
        raise DataError(f"{where}: 'annotator_labels' must be an object")
    ann = {str(k): v for k, v in ann.items() if v is not None}
    for k, v in ann.items():
        if v not in LABELS:
            raise DataError(f"{where}: unknown label {v!r} for {k}; allowed: {', '.join(LABELS)}")
    return TestsetRow(index, tuple(msgs), str(label), ann)


def _iter_raw(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.startswith(HUB_PREFIX):
        datasets = require("datasets", "hub")
        name, _, split = path[len(HUB_PREFIX):].partition("@")
        ds = datasets.load_dataset(name, split=split or "test")  # type: ignore[attr-defined]
        for i, r in enumerate(ds):
            yield f"{name} row {i}", dict(r)
        return
    p = open_checked(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        for n, obj in read_jsonl(p):
            yield f"{p}:{n}", obj
    elif suffix in (".parquet", ".csv"):
        pd = require("pandas", "data")
        try:
            df = pd.read_parquet(p) if suffix == ".parquet" else pd.read_csv(p)  # type: ignore[attr-defined]
        except Exception as exc:  # pandas raises many types for bad files
            raise DataError(f"{p}: cannot read as {suffix[1:]} ({exc})") from None
        if len(df) == 0:
            raise DataError(f"{p}: the file has no rows")
        missing = {"prompt", "label"} - set(df.columns)
        if missing:
            raise DataError(f"{p}: missing column(s) {', '.join(sorted(missing))}")
        for i, rec in enumerate(df.to_dict("records")):
            yield f"{p} row {i + 2 if suffix == '.csv' else i}", rec
    else:
        raise DataError(f"{p}: unknown file type {suffix!r}; expected .jsonl, .parquet or .csv")


def read_testset_rows(path: str | Path) -> list[TestsetRow]:
    """Read and validate every row (JSONL, parquet, CSV with JSON `prompt`, or `hub:NAME[@split]`)."""
    return [_parse_row(i, raw, where) for i, (where, raw) in enumerate(_iter_raw(str(path)))]


def _prefix_keys(prompt: tuple[tuple[str, str], ...]) -> list[int]:
    keys, h = [], 0
    for m in prompt:
        h = hash((h, m))
        keys.append(h)
    return keys


def group_rows(rows: list[TestsetRow], source: str = "testset") -> list[Conversation]:
    """Rebuild conversations from rows (see module docstring)."""
    keys = [_prefix_keys(r.prompt) for r in rows]
    proper = {k for ks in keys for k in ks[:-1]}
    owner_of_prefix: dict[int, int] = {}
    maximal: list[int] = []
    for r, ks in enumerate(keys):
        if ks[-1] not in proper and ks[-1] not in owner_of_prefix:
            maximal.append(r)
            for k in ks:
                owner_of_prefix.setdefault(k, r)
    by_key: dict[int, list[TestsetRow]] = {}
    for r, ks in enumerate(keys):
        by_key.setdefault(ks[-1], []).append(rows[r])
    convs = []
    for n, m in enumerate(maximal):
        msgs = []
        for (role, content), k in zip(rows[m].prompt, keys[m]):
            same = by_key.get(k, []) if role == "user" else []
            if same:
                first = same[0]
                owned = tuple(x.index for x in same if owner_of_prefix[k] == m)
                msgs.append(Message(role, content, first.label, dict(first.annotator_labels) or None, rows=owned))
            else:
                msgs.append(Message(role, content))
        convs.append(Conversation(f"{source}-{n:04d}", tuple(msgs), {"source": source, "from_testset": True}))
    return convs


def read_testset(path: str | Path) -> list[Conversation]:
    """Read testset-schema rows and group them into labelled conversations."""
    return group_rows(read_testset_rows(path), source=Path(str(path)).stem if not str(path).startswith(HUB_PREFIX) else "hub")


def conversation_rows(conversations: Iterable[Conversation]) -> list[tuple[int | None, Conversation, int]]:
    """(original row number or None, conversation, message index) for every row a set of
    conversations stands for: testset-derived conversations give back their own rows (duplicates
    included), others one row per labelled user turn."""
    out: list[tuple[int | None, Conversation, int]] = []
    for c in conversations:
        for i, m in enumerate(c.messages):
            if m.role != "user" or m.label is None:
                continue
            if c.meta.get("from_testset"):
                out += [(r, c, i) for r in m.rows]
            else:
                out.append((None, c, i))
    out.sort(key=lambda t: (t[0] is None, t[0] if t[0] is not None else 0))
    return out


def to_testset_records(conversations: Iterable[Conversation]) -> list[dict[str, Any]]:
    """Rows in the testset schema for every labelled user turn (see `conversation_rows`)."""
    recs = []
    for _, c, i in conversation_rows(conversations):
        prompt = [{"role": m.role, "content": m.content} for m in c.messages[: i + 1]]
        m = c.messages[i]
        recs.append({"prompt": prompt, "user_message": m.content, "label": m.label,
                     "annotator_labels": dict(m.votes or {})})
    return recs


def write_testset(path: str | Path, conversations: Iterable[Conversation]) -> int:
    """Write testset-schema rows as .jsonl, .csv (prompt as JSON text) or .parquet."""
    p = Path(path)
    recs = to_testset_records(conversations)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return write_jsonl(p, recs)
    pd = require("pandas", "data")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        df = pd.DataFrame([{**r, "prompt": json.dumps(r["prompt"], ensure_ascii=False),  # type: ignore[attr-defined]
                            "annotator_labels": json.dumps(r["annotator_labels"])} for r in recs])
        df.to_csv(p, index=False)
    elif suffix == ".parquet":
        # parquet cannot store an empty struct: rows without votes get a null
        pd.DataFrame([{**r, "annotator_labels": r["annotator_labels"] or None} for r in recs]).to_parquet(p, index=False)  # type: ignore[attr-defined]
    else:
        raise DataError(f"{p}: unknown file type {suffix!r}; expected .jsonl, .parquet or .csv")
    return len(recs)
