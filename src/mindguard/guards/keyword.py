"""`keyword`: an honest, naive lexicon baseline — the floor every other guard must clear.

It reads only the target user turn and matches a short list of risk phrases, each with a weight;
p(unsafe) = 1 - prod(1 - weight) over the matches. It flags topics, so it fires on figures of
speech and misses indirect or context-dependent risk: exactly the failure the project exists to fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..conversation import Message, require_user_last
from ..taxonomy import HARM_OTHERS, SAFE, SELF_HARM
from ._base import Assessment, BaseGuard, Evidence, make_assessment

# (pattern, label, weight)
LEXICON: tuple[tuple[str, str, float], ...] = (
    (r"\bkill(ing)? my ?self\b", SELF_HARM, 0.9),
    (r"\bsuicid(e|al)\b", SELF_HARM, 0.7),
    (r"\bend (it all|my life|things)\b", SELF_HARM, 0.8),
    (r"\b(want|wanna|wish i (was|were)) (to )?(be )?dead\b", SELF_HARM, 0.8),
    (r"\bdon'?t want to (live|be alive|be here)\b", SELF_HARM, 0.8),
    (r"\bnot wake up\b", SELF_HARM, 0.6),
    (r"\bbetter off without me\b", SELF_HARM, 0.7),
    (r"\b(cut|cutting|burn|burning) (my ?self|my (arm|arms|wrist|wrists|legs|thigh|thighs))\b", SELF_HARM, 0.7),
    (r"\bself[- ]?harm\b", SELF_HARM, 0.5),
    (r"\boverdose\b|\bod\b", SELF_HARM, 0.6),
    (r"\b(pills|tablets)\b", SELF_HARM, 0.2),
    (r"\b(hang|hanging) my ?self\b|\bnoose\b|\brope\b", SELF_HARM, 0.5),
    (r"\bjump (off|from)\b|\bbridge\b", SELF_HARM, 0.3),
    (r"\bkms\b|\bunalive\b", SELF_HARM, 0.6),
    (r"\bdie\b|\bdying\b|\bdeath\b", SELF_HARM, 0.25),
    (r"\bhopeless\b|\bno way out\b|\bpointless\b", SELF_HARM, 0.2),
    (r"\bgoodbye\b|\bfarewell\b", SELF_HARM, 0.2),
    (r"\bkill (him|her|them|you|my \w+)\b", HARM_OTHERS, 0.7),
    (r"\bmurder\b", HARM_OTHERS, 0.5),
    (r"\bhurt (him|her|them|someone|somebody)\b", HARM_OTHERS, 0.5),
    (r"\b(gun|knife|shoot|stab|poison)\b", HARM_OTHERS, 0.4),
    (r"\bget what'?s coming\b|\bpay for (this|it|what)\b|\brevenge\b", HARM_OTHERS, 0.4),
    (r"\b(beat|hit|slap|punch|choke|strangle)\b", HARM_OTHERS, 0.3),
    (r"\b(abuse|abusing)\b", HARM_OTHERS, 0.3),
)
_COMPILED = tuple((re.compile(p, re.IGNORECASE), lab, w) for p, lab, w in LEXICON)


class KeywordGuard(BaseGuard):
    """Lexicon matching on the target user turn only."""

    name = "keyword"

    def __init__(self, threshold: float = 0.5, name: str = "keyword") -> None:
        self.threshold = float(threshold)
        self.name = name

    def _one(self, messages: Sequence[Message]) -> Assessment:
        require_user_last(messages)
        text = messages[-1].content
        keep = {SELF_HARM: 1.0, HARM_OTHERS: 1.0}
        evidence = []
        for rx, lab, w in _COMPILED:
            m = rx.search(text)
            if m:
                keep[lab] *= 1.0 - w
                evidence.append(Evidence(len(messages) - 1, "user", m.group(0), w))
        risk = {lab: 1.0 - k for lab, k in keep.items()}
        p_unsafe = 1.0 - keep[SELF_HARM] * keep[HARM_OTHERS]
        total = sum(risk.values()) or 1.0
        probs = {SAFE: 1.0 - p_unsafe, **{lab: p_unsafe * r / total for lab, r in risk.items()}}
        evidence.sort(key=lambda e: -e.weight)
        return make_assessment(probs, self.threshold, len(messages) - 1, self.name, evidence)

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        return [self._one(c) for c in contexts]
