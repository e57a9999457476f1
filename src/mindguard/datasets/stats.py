"""Summary figures of a labelled corpus: counts, label distribution, turn lengths, agreement."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from ..conversation import Conversation
from ..taxonomy import LABELS, is_unsafe


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa between two label sequences of equal length (1.0 when both are constant and equal)."""
    from sklearn.metrics import cohen_kappa_score

    if len(set(a) | set(b)) < 2:
        return 1.0
    return float(cohen_kappa_score(list(a), list(b)))


def corpus_stats(conversations: Sequence[Conversation]) -> dict[str, Any]:
    """Counts, label distribution, turns per conversation, word lengths and annotator agreement."""
    users = [m for c in conversations for m in c.messages if m.role == "user"]
    labelled = [m for m in users if m.label is not None]
    labels = Counter(m.label for m in labelled)
    per_conv = [len(c.user_turns()) for c in conversations]
    words = [len(m.content.split()) for m in users]
    out: dict[str, Any] = {
        "conversations": len(conversations),
        "user_turns": len(users),
        "labelled_turns": len(labelled),
        "labels": {lab: labels.get(lab, 0) for lab in LABELS},
        "unsafe_share": round(sum(labels[x] for x in labels if x and is_unsafe(x)) / max(len(labelled), 1), 4),
        "conversations_with_risk": sum(any(m.label and is_unsafe(m.label) for m in c.messages) for c in conversations),
        "hard_negative_turns": sum(m.hard_negative for m in users),
        "conversations_with_hard_negatives": sum(any(m.hard_negative for m in c.messages) for c in conversations),
        "turns_per_conversation": {
            "mean": round(statistics.fmean(per_conv), 2) if per_conv else 0,
            "median": statistics.median(per_conv) if per_conv else 0,
            "max": max(per_conv, default=0),
        },
        "user_words": {
            "median": statistics.median(words) if words else 0,
            "p90": sorted(words)[int(0.9 * (len(words) - 1))] if words else 0,
        },
    }
    voted = [m for m in labelled if m.votes and len(m.votes) >= 2]
    if voted:
        unanimous = sum(len(set(m.votes.values())) == 1 for m in voted if m.votes)
        out["annotator_agreement"] = {"turns_with_votes": len(voted), "unanimous_share": round(unanimous / len(voted), 4)}
        names = sorted({k for m in voted if m.votes for k in m.votes})
        kappas = {}
        for x, y in combinations(names, 2):
            pairs = [(m.votes[x], m.votes[y]) for m in voted if m.votes and x in m.votes and y in m.votes]
            if pairs:
                kappas[f"{x}~{y}"] = round(cohen_kappa([p[0] for p in pairs], [p[1] for p in pairs]), 4)
        out["annotator_agreement"]["cohen_kappa"] = kappas
    sources = Counter(str(c.meta.get("family") or c.meta.get("source") or "?") for c in conversations)
    if len(sources) > 1:
        out["by_family"] = dict(sorted(sources.items()))
    return out


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable rendering of `corpus_stats`."""
    lines = [
        f"conversations        {stats['conversations']}",
        f"user turns           {stats['user_turns']} (labelled {stats['labelled_turns']})",
    ]
    for lab, n in stats["labels"].items():
        lines.append(f"  {lab:<24} {n:>6} ({n / max(stats['labelled_turns'], 1):.1%})")
    t = stats["turns_per_conversation"]
    lines += [
        f"unsafe share         {stats['unsafe_share']:.1%}",
        f"convs with risk      {stats['conversations_with_risk']}",
        f"hard-negative turns  {stats['hard_negative_turns']} in {stats['conversations_with_hard_negatives']} conversations",
        f"user turns/conv      mean {t['mean']}, median {t['median']}, max {t['max']}",
        f"user words           median {stats['user_words']['median']}, p90 {stats['user_words']['p90']}",
    ]
    if "annotator_agreement" in stats:
        a = stats["annotator_agreement"]
        lines.append(f"annotator agreement  {a['unanimous_share']:.1%} unanimous over {a['turns_with_votes']} turns")
        for pair, k in a["cohen_kappa"].items():
            lines.append(f"  kappa {pair}: {k}")
    if "by_family" in stats:
        lines.append("by family            " + ", ".join(f"{k}={v}" for k, v in stats["by_family"].items()))
    return "\n".join(lines)


def label_agreement(first: Sequence[Conversation], second: Sequence[Conversation]) -> dict[str, Any]:
    """Per-turn agreement between two labellings of the same conversations (matched by id and
    message text): raw agreement and Cohen's kappa, three-way and binary, plus the disagreements."""
    from ..errors import DataError

    other = {c.id: c for c in second}
    a: list[str] = []
    b: list[str] = []
    disagreements = []
    for c in first:
        d = other.get(c.id)
        if d is None:
            continue
        ua, ub = c.user_turns(), d.user_turns()
        if [m.content for m in ua] != [m.content for m in ub]:
            raise DataError(f"conversation {c.id!r} differs between the two files")
        for k, (x, y) in enumerate(zip(ua, ub)):
            if x.label is None or y.label is None:
                continue
            a.append(x.label)
            b.append(y.label)
            if x.label != y.label:
                disagreements.append({"id": c.id, "turn": k, "first": x.label, "second": y.label})
    if not a:
        raise DataError("the two files share no labelled conversations")
    ba = ["unsafe" if is_unsafe(x) else "safe" for x in a]
    bb = ["unsafe" if is_unsafe(x) else "safe" for x in b]
    return {
        "conversations": len({d["id"] for d in disagreements} | {c.id for c in first if c.id in other}),
        "turns": len(a),
        "agreement": round(sum(x == y for x, y in zip(a, b)) / len(a), 4),
        "cohen_kappa": round(cohen_kappa(a, b), 4),
        "binary_agreement": round(sum(x == y for x, y in zip(ba, bb)) / len(a), 4),
        "binary_cohen_kappa": round(cohen_kappa(ba, bb), 4),
        "disagreements": disagreements,
    }
