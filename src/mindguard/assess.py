"""Assess whole conversations with a guard and present the results (used by `mindguard assess`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .conversation import Conversation
from .guards import BaseGuard


def assess_conversations(guard: BaseGuard, conversations: Sequence[Conversation], last_only: bool = False) -> list[dict[str, Any]]:
    """Per conversation, the assessment of each user turn (or only the last) as plain dicts."""
    out = []
    for conv in conversations:
        idx = conv.user_turn_indices()
        if last_only:
            idx = idx[-1:]
        turns = []
        for i, a in zip(idx, guard.assess_conversation(conv, idx)):
            d = a.to_dict()
            d["turn"] = conv.user_turn_indices().index(i)
            turns.append(d)
        out.append({"id": conv.id, "guard": guard.name, "turns": turns})
    return out


def format_table(results: Sequence[dict[str, Any]], width: int = 48) -> str:
    """A readable table: one row per user turn, flagged turns marked, with the top evidence."""
    lines = []
    for r in results:
        lines.append(f"conversation {r['id']}  (guard {r['guard']})")
        lines.append(f"  {'turn':>4} {'msg':>4}  {'flag':<4} {'label':<22} {'p_unsafe':>8}  {'p_self':>6} {'p_other':>7}  evidence")
        for t in r["turns"]:
            p = t["probabilities"]
            ev = t["evidence"][0] if t["evidence"] else None
            evs = ""
            if ev:
                text = ev["text"] if len(ev["text"]) <= width else ev["text"][: width - 1] + "…"
                evs = f"[msg {ev['message_index']} {ev['role']}] {text!r}"
            lines.append(
                f"  {t['turn']:>4} {t['message_index']:>4}  {'!!' if t['flagged'] else '':<4} {t['label']:<22} "
                f"{t['p_unsafe']:>8.3f}  {p['unsafe_self_harm_risk']:>6.3f} {p['unsafe_harm_to_others']:>7.3f}  {evs}"
            )
    return "\n".join(lines)
