"""Build the training corpus: authored sources -> native JSONL, deduplicated, split without leakage.

Conversations are tied together when they share a persona line or a user sentence of more than
five words (near-duplicates); tied groups always land in the same split. Validation takes about
`val_share` of the conversations of *every* scenario family (and of its risky and safe
conversations alike), so each family is judged on conversations written apart from its training
ones. Generated (synthetic) conversations are training-only: validation stays hand-written.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..conversation import Conversation
from ..errors import DataError
from ..taxonomy import is_unsafe
from .authored import parse_authored
from .native import read_native, write_native

_SPLIT = re.compile(r"(?<=[.!?])\s+")


def long_sentences(conv: Conversation, min_words: int = 6) -> set[str]:
    """Normalised user sentences with at least `min_words` words."""
    out = set()
    for m in conv.user_turns():
        for s in _SPLIT.split(m.content.lower()):
            s = re.sub(r"\W+", " ", s).strip()
            if len(s.split()) >= min_words:
                out.add(s)
    return out


def leakage_groups(convs: Sequence[Conversation]) -> list[int]:
    """Union-find group id per conversation (shared persona or shared long user sentence)."""
    parent = list(range(len(convs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, c in enumerate(convs):
        keys = {"persona:" + str(c.meta.get("persona", "")).strip().lower()} if c.meta.get("persona") else set()
        keys |= {"s:" + s for s in long_sentences(c)}
        for k in keys:
            j = owner.setdefault(k, i)
            if j != i:
                parent[find(i)] = find(j)
    return [find(i) for i in range(len(convs))]


def split_conversations(convs: Sequence[Conversation], val_share: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Stratified (family x risky) group split; see module docstring."""
    if not 0.0 < val_share < 1.0:
        raise DataError(f"val share must be between 0 and 1, got {val_share}")
    groups = leakage_groups(convs)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    strata: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for g, idx in members.items():
        c = convs[idx[0]]
        risky = any(m.label and is_unsafe(m.label) for k in idx for m in convs[k].messages)
        strata[(str(c.meta.get("family", "")), risky)].append(g)
    rng = random.Random(seed)
    val_idx: set[int] = set()
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        target = val_share * sum(len(members[g]) for g in gs)
        taken = 0
        for g in gs:
            if taken >= target - 0.5:
                break
            val_idx.update(members[g])
            taken += len(members[g])
    train = [c for i, c in enumerate(convs) if i not in val_idx]
    val = [c for i, c in enumerate(convs) if i in val_idx]
    return train, val


def load_authored_dir(folder: Path) -> list[Conversation]:
    """Every authored source in `folder`, failing on the first problem found."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"{folder}: no authored .txt sources found")
    convs: list[Conversation] = []
    problems: list[str] = []
    for f in files:
        got, found = parse_authored(f)
        convs += got
        problems += found
    if problems:
        raise DataError(f"{problems[0]} (and {len(problems) - 1} more problems)" if len(problems) > 1 else problems[0])
    ids = [c.id for c in convs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"conversation id {dup!r} appears twice")
    return convs


def build_corpus(authored: Path, out: Path, val_share: float = 0.2, seed: int = 13, synthetic: Path | None = None) -> dict[str, Any]:
    """Write `authored_train.jsonl`, `authored_val.jsonl` (and copy nothing else); returns counts."""
    convs = load_authored_dir(authored)
    train, val = split_conversations(convs, val_share, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_native(out / "authored_train.jsonl", train)
    write_native(out / "authored_val.jsonl", val)
    summary: dict[str, Any] = {
        "authored_conversations": len(convs), "train_conversations": len(train), "val_conversations": len(val),
        "train_turns": sum(len(c.user_turns()) for c in train), "val_turns": sum(len(c.user_turns()) for c in val),
    }
    if synthetic is not None:
        summary["synthetic_conversations"] = len(read_native(synthetic))
    return summary
