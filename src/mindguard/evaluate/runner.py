"""Score every labelled user turn with its full preceding context and build the report.

For testset-schema data every row counts (duplicated prompts included), each scored with exactly
its own prompt; rows are grouped into conversations only so that a streaming guard reads each
conversation once and so the bootstrap resamples whole conversations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..conversation import Conversation
from ..datasets.testset import conversation_rows
from ..errors import DataError
from ..guards import BaseGuard
from .metrics import auroc, binary, fpr_at_tpr, guard_metrics


@dataclass
class TurnScores:
    """One scored row: where it is, its gold label, and each guard's p(unsafe) and label."""

    conversation_id: str
    turn_index: int
    row: int | None
    gold: str
    p_unsafe: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, str] = field(default_factory=dict)


def score_turns(
    conversations: Sequence[Conversation], guards: Sequence[BaseGuard], progress: bool = True
) -> tuple[list[TurnScores], dict[str, float]]:
    """Score every labelled row with every guard; returns the rows and seconds per guard."""
    rows = conversation_rows(conversations)
    if not rows:
        raise DataError("the data has no labelled user turns to evaluate")
    items = [TurnScores(c.id, i, r, str(c.messages[i].label)) for r, c, i in rows]
    by_conv: dict[str, tuple[Conversation, list[int]]] = {}
    for _, c, i in rows:
        by_conv.setdefault(c.id, (c, []))[1].append(i)
    seconds: dict[str, float] = {}
    for guard in guards:
        # metrics need scores only: guards that can explain their verdicts skip it here
        explain = getattr(guard, "explain", None)
        if explain:
            guard.explain = False  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        found: dict[tuple[str, int], tuple[float, str]] = {}
        convs = list(by_conv.values())
        chunks = [convs[s: s + 32] for s in range(0, len(convs), 32)]
        for chunk in _progress(chunks, f"{guard.name}", progress):
            wanted = [sorted(set(idx)) for _, idx in chunk]
            for (conv, _), uniq, res in zip(chunk, wanted, guard.assess_many([c for c, _ in chunk], wanted)):
                for i, a in zip(uniq, res):
                    found[(conv.id, i)] = (a.p_unsafe, a.label)
        seconds[guard.name] = time.perf_counter() - t0
        if explain:
            guard.explain = explain  # type: ignore[attr-defined]
        for it in items:
            p, lab = found[(it.conversation_id, it.turn_index)]
            it.p_unsafe[guard.name] = float(p)
            it.predicted[guard.name] = lab
    return items, seconds


def _progress(seq: list[Any], desc: str, enabled: bool) -> Any:
    if not enabled:
        return seq
    from tqdm import tqdm

    return tqdm(seq, desc=desc, unit="chunk", leave=False)


def evaluate(
    conversations: Sequence[Conversation], guards: Sequence[BaseGuard], progress: bool = True,
    bootstrap: int = 1000, seed: int = 0, by: str | None = None,
) -> tuple[dict[str, Any], list[TurnScores]]:
    """Report dict (per guard metrics) and the per-row scores. With `by`, also a breakdown per
    value of that conversation metadata key (e.g. `family`, `source`), to show where a guard fails."""
    if by is not None and not any(by in c.meta for c in conversations):
        keys = sorted({k for c in conversations for k in c.meta})
        raise DataError(f"no conversation has the metadata key {by!r}; keys present: {', '.join(keys) or 'none'}")
    names = [g.name for g in guards]
    if len(set(names)) != len(names):
        raise DataError(f"two guards share a name ({', '.join(names)}); give each a distinct name= option")
    items, seconds = score_turns(conversations, guards, progress)
    gold = [it.gold for it in items]
    groups = [it.conversation_id for it in items]
    report: dict[str, Any] = {"n_conversations": len({it.conversation_id for it in items}), "guards": {}}
    for g in guards:
        m = guard_metrics(gold, [it.p_unsafe[g.name] for it in items], [it.predicted[g.name] for it in items],
                          groups, bootstrap=bootstrap, seed=seed)
        m["seconds"] = round(seconds[g.name], 3)
        m["default_threshold"] = g.threshold
        report["guards"][g.name] = m
    if by is not None:
        report["by"] = {"key": by, "groups": _breakdown(conversations, items, names, by)}
    return report, items


def _breakdown(conversations: Sequence[Conversation], items: Sequence[TurnScores], names: Sequence[str], key: str) -> dict[str, Any]:
    """Per-group turn counts, AUROC and FPR@90%TPR (None where a group lacks safe or unsafe turns)."""
    value = {c.id: str(c.meta.get(key, "(none)")) for c in conversations}
    rows: dict[str, list[TurnScores]] = {}
    for it in items:
        rows.setdefault(value[it.conversation_id], []).append(it)
    out: dict[str, Any] = {}
    for v in sorted(rows):
        y = binary([it.gold for it in rows[v]])
        entry: dict[str, Any] = {"n_conversations": len({it.conversation_id for it in rows[v]}),
                                 "n_turns": len(y), "n_unsafe": int(y.sum()), "guards": {}}
        for n in names:
            s = np.array([it.p_unsafe[n] for it in rows[v]])
            entry["guards"][n] = {"auroc": auroc(y, s), "fpr_at_tpr_90": fpr_at_tpr(y, s, 0.90)}
        out[v] = entry
    return out


def write_scores(path: Path, items: Sequence[TurnScores]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"conversation_id": it.conversation_id, "turn_index": it.turn_index, "row": it.row,
                                 "gold": it.gold, "p_unsafe": it.p_unsafe}) + "\n")
