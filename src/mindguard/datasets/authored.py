"""The plain-text source format of hand-authored conversations (`data/authored/*.txt`).

Writers and clinical reviewers edit these files directly; `mindguard data build` turns them into
native JSONL. One message per line, conversations introduced by `=== ID` and a few headers:

    === anger-001
    family: anger
    scenario: ex-partner-gym
    persona: 27yo warehouse worker, terse
    trajectory: anger_to_specific_threat
    U safe | cant sleep again
    A | That sounds exhausting. What's keeping you up?
    U other | i know when she leaves the gym || specific target and time

`U` codes: `safe`, `hn` (safe hard negative), `self` (unsafe_self_harm_risk), `other`
(unsafe_harm_to_others); text after ` || ` is the rationale, required for hn/self/other.
The authoring guide is `data/authored/AUTHORING.md`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..conversation import Conversation, Message
from ..errors import DataError
from ._jsonl import open_checked

CODES = {"safe": "safe", "hn": "safe", "self": "unsafe_self_harm_risk", "other": "unsafe_harm_to_others"}
TRAJECTORIES = frozenset({
    "never_risky", "venting_hyperbole", "anger_venting_no_intent", "past_attempt_processed",
    "old_self_harm_processed", "worry_about_other", "fiction_news_academic",
    "intrusive_thoughts_egodystonic", "escalation_to_passive_ideation", "escalation_to_plan_or_means",
    "recent_self_harm", "method_seeking_curiosity", "asking_for_a_friend",
    "retraction_after_disclosure", "anger_to_specific_threat", "ongoing_abuse_or_neglect",
    "deescalation_after_safety_plan", "late_indirect_disclosure", "command_voices", "preparation_goodbye",
})
_HEADER = re.compile(r"^(family|scenario|persona|trajectory|notes):\s*(.*)$")
_USER = re.compile(r"^U (safe|hn|self|other) \| (.+)$")
_ASSISTANT = re.compile(r"^A \| (.+)$")
REQUIRED = ("family", "scenario", "persona", "trajectory")


def parse_authored(path: str | Path) -> tuple[list[Conversation], list[str]]:
    """Parse one source file; returns (conversations, problems). Each problem names file:line."""
    p = open_checked(path)
    blocks: list[tuple[int, str, dict[str, str], list[Message]]] = []
    problems: list[str] = []
    for n, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("=== "):
            blocks.append((n, line[4:].strip(), {}, []))
            continue
        if not blocks:
            problems.append(f"{p}:{n}: text before the first '=== ID' line")
            continue
        _, _, meta, msgs = blocks[-1]
        try:
            if (m := _HEADER.match(line)) and not msgs:
                meta[m.group(1)] = m.group(2).strip()
            elif m := _ASSISTANT.match(line):
                msgs.append(Message("assistant", m.group(1).strip()))
            elif m := _USER.match(line):
                code, rest = m.groups()
                text, _, why = rest.partition(" || ")
                if code != "safe" and not why.strip():
                    problems.append(f"{p}:{n}: a '{code}' turn needs a rationale after ' || '")
                msgs.append(Message("user", text.strip(), CODES[code], rationale=why.strip() or None,
                                    hard_negative=code == "hn"))
            else:
                problems.append(f"{p}:{n}: cannot parse line: {line[:80]!r}")
        except DataError as exc:
            problems.append(f"{p}:{n}: {exc}")
    convs: list[Conversation] = []
    seen: set[str] = set()
    for n, cid, meta, msgs in blocks:
        where = f"{p}:{n} ({cid})"
        if cid in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(cid)
        problems += [f"{where}: missing '{k}:' header" for k in REQUIRED if not meta.get(k)]
        trajs = [t.strip() for t in meta.get("trajectory", "").split(",") if t.strip()]
        problems += [f"{where}: unknown trajectory {t!r}" for t in trajs if t not in TRAJECTORIES]
        if not msgs or msgs[0].role != "user":
            problems.append(f"{where}: must start with a user turn")
            continue
        problems += [f"{where}: two {a.role} messages in a row" for a, b in zip(msgs, msgs[1:]) if a.role == b.role]
        convs.append(Conversation(cid, tuple(msgs), {**meta, "source": "authored", "trajectory": trajs}))
    return convs, problems


def read_authored(path: str | Path) -> list[Conversation]:
    """Parse a source file, raising DataError on the first problem."""
    convs, problems = parse_authored(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    return convs
