"""Writing-style transforms that make generated user turns read like people typing on a phone.

Each persona lists styles (`lowercase`, `no_apostrophes`, `typos`, `abbreviations`, `slang`, `emoji`,
`non_native`, `run_on`, `swearing`, `formal`, and the engine-level `terse` / `rambling`, which
shape length rather than spelling). `apply_style` rewrites one turn under a persona's styles with a
seeded `random.Random`. The transforms change spelling, casing and punctuation, never meaning: they
do not touch negations or the words a label depends on beyond what a real typist would (a dropped
apostrophe, "you" -> "u"), so a turn's label holds after styling.

Example:
    >>> apply_style("I don't know what to do.", ("lowercase", "no_apostrophes"), random.Random(0))
    'i dont know what to do'
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

# Phrase-level abbreviations people actually type; each applied with its own probability.
_ABBREVIATIONS: tuple[tuple[str, str, float], ...] = (
    (r"\bI don't know\b", "idk", 0.7),
    (r"\bi don't know\b", "idk", 0.7),
    (r"\bto be honest\b", "tbh", 0.7),
    (r"\bhonestly\b", "honestly", 0.0),
    (r"\bright now\b", "rn", 0.5),
    (r"\bbecause\b", "bc", 0.4),
    (r"\bbecause\b", "cuz", 0.3),
    (r"\byou\b", "u", 0.5),
    (r"\byour\b", "ur", 0.5),
    (r"\bpeople\b", "ppl", 0.5),
    (r"\bprobably\b", "prob", 0.4),
    (r"\bsomething\b", "smth", 0.3),
    (r"\breally\b", "rly", 0.3),
    (r"\bplease\b", "pls", 0.5),
    (r"\bthough\b", "tho", 0.6),
    (r"\bokay\b", "ok", 0.7),
    (r"\bgoing to\b", "gonna", 0.6),
    (r"\bwant to\b", "wanna", 0.5),
    (r"\bkind of\b", "kinda", 0.6),
    (r"\bsort of\b", "sorta", 0.4),
    (r"\bnot going to lie\b", "ngl", 0.8),
    (r"\boh my god\b", "omg", 0.7),
    (r"\bthanks\b", "thx", 0.3),
    (r"\bthank you\b", "ty", 0.3),
    (r"\bwith\b", "w", 0.15),
    (r"\bbefore\b", "b4", 0.1),
    (r"\btomorrow\b", "tmrw", 0.3),
    (r"\btonight\b", "tonite", 0.1),
    (r"\bat the moment\b", "atm", 0.4),
    (r"\bin my opinion\b", "imo", 0.6),
    (r"\bby the way\b", "btw", 0.7),
    (r"\bfor real\b", "fr", 0.5),
    (r"\bsee you\b", "cya", 0.4),
    (r"\bwhatever\b", "whatevs", 0.1),
    (r"\bbrother\b", "bro", 0.2),
    (r"\bsister\b", "sis", 0.2),
)
_SLANG_PREFIX = ("ngl ", "lowkey ", "honestly ", "bro ", "fr ", "like ", "istg ", "deadass ", "tbh ", "yo ")
_SLANG_SUFFIX = (" fr", " lol", " ngl", " lmao", " tbh", " idk", " smh", " fr fr", " bruh")
_SWEARS = ((r"\bso (tired|done|sick|angry|stressed|exhausted|fed up|over it)\b", r"so fucking \1"),
           (r"\bhate\b", "fucking hate"), (r"\breally\b", "really fucking"), (r"\bstupid\b", "stupid ass"),
           (r"^", "ugh shit. "), (r"\bthe job\b", "the shit job"), (r"\bidk\b", "idfk"))
_EMOJI_SAD = ("😭", "😔", "🥲", "😞", "💔", "😩", "😢", "🙃", "😪", "😣")
_EMOJI_LIGHT = ("😅", "🙂", "🤷", "😂", "🙏", "❤️", "😊", "👍", "🫠", "💀")
_KEYBOARD = {
    "a": "qsz", "b": "vn", "c": "xv", "d": "sf", "e": "wr", "f": "dg", "g": "fh", "h": "gj", "i": "uo", "j": "hk",
    "k": "jl", "l": "k", "m": "n", "n": "bm", "o": "ip", "p": "o", "r": "et", "s": "ad", "t": "ry", "u": "yi",
    "v": "cb", "w": "qe", "y": "tu",
}
_PROTECTED = frozenset({"not", "no", "never", "dont", "don't", "die", "dead", "kill", "pills", "hurt", "yes", "yeah"})
_NON_NATIVE: tuple[tuple[str, str, float], ...] = (
    (r"\bI'm\b", "I am", 0.8),
    (r"\bdon't\b", "do not", 0.5),
    (r"\bcan't\b", "cannot", 0.6),
    (r"\bit's\b", "it is", 0.6),
    (r"\bI've been\b", "I am", 0.4),
    (r"\bfor (two|three|four|a few) (days|weeks|months)\b", r"since \1 \2", 0.6),
    (r"\ba lot\b", "too much", 0.3),
    (r"\bvery\b", "very much", 0.2),
    (r"\bthe\s", "", 0.25),
    (r"\ba\s(?=[a-z])", "", 0.2),
    (r"\bdoesn't\b", "is not", 0.3),
    (r"\bwent\b", "go", 0.2),
    (r"\bmakes me\b", "make me", 0.4),
    (r"\bthey are\b", "they is", 0.1),
)
_SENTENCE_END = re.compile(r"\.\s+(\S)")
_SAD_WORDS = re.compile(r"\b(tired|sad|alone|cry|crying|hate|hurt|awful|worst|die|dead|lost|miss|scared|anxious|bad)\b", re.I)


def _maybe_sub(text: str, pattern: str, repl: str, p: float, rng: random.Random) -> str:
    def one(m: re.Match[str]) -> str:
        return m.expand(repl) if rng.random() < p else m.group(0)

    return re.sub(pattern, one, text)


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.random()
    if kind < 0.3:  # swap two letters
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind < 0.55:  # drop one
        return word[:i] + word[i + 1 :]
    if kind < 0.75:  # double one
        return word[:i] + word[i] + word[i:]
    near = _KEYBOARD.get(word[i].lower())
    return word[:i] + (rng.choice(near) if near else word[i]) + word[i + 1 :]


def add_typos(text: str, rng: random.Random, rate: float = 0.05) -> str:
    """Misspell about `rate` of the longer words (never the few words labels hinge on)."""
    out = []
    for tok in text.split(" "):
        core = tok.strip(".,!?;:'\"").lower()
        if len(core) >= 4 and core.isalpha() and core not in _PROTECTED and rng.random() < rate:
            tok = _typo(tok, rng)
        out.append(tok)
    return " ".join(out)


def apply_style(text: str, styles: Sequence[str], rng: random.Random, short: bool = False, sad: bool = False) -> str:
    """Rewrite one user turn under `styles`; `short` turns ("yeah", "idk") get only casing/emoji, and
    `sad` turns (disclosures) only the emoji people use when they are low."""
    s = set(styles)
    if "non_native" in s and not short:
        for pat, rep, p in _NON_NATIVE:
            text = _maybe_sub(text, pat, rep, p, rng)
    if "abbreviations" in s:
        for pat, rep, p in _ABBREVIATIONS:
            if p:
                text = _maybe_sub(text, pat, rep, p, rng)
    if "swearing" in s and not short and rng.random() < 0.4:
        pattern, rep = _SWEARS[rng.randrange(len(_SWEARS))]
        text = re.sub(pattern, rep, text, count=1)
    if "run_on" in s and not short:
        text = _run_on(text, rng)
        if rng.random() < 0.6:
            text = text.rstrip(".")
    if "slang" in s and not short:
        r = rng.random()
        if r < 0.2:
            text = rng.choice(_SLANG_PREFIX) + text[:1].lower() + text[1:]
        elif r < 0.4:
            text = text.rstrip(".") + rng.choice(_SLANG_SUFFIX)
    if "typos" in s and not short:
        text = add_typos(text, rng, 0.06)
    elif not short and "formal" not in s and rng.random() < 0.25:  # everyone slips now and then
        text = add_typos(text, rng, 0.02)
    if "no_apostrophes" in s or ("lowercase" in s and rng.random() < 0.5):
        text = text.replace("'", "").replace("\u2019", "")
    if "lowercase" in s:
        if rng.random() < 0.92:
            text = text.lower()
        if rng.random() < 0.6:
            text = text.rstrip(".")
    elif "formal" in s:
        text = _capitalise(text)
    elif rng.random() < 0.15:
        text = text[:1].lower() + text[1:]
    if "emoji" in s and rng.random() < (0.3 if short else 0.45):
        pool = _EMOJI_SAD if sad or _SAD_WORDS.search(text) or rng.random() < 0.5 else _EMOJI_LIGHT
        e = rng.choice(pool) * (2 if rng.random() < 0.2 else 1)
        text = text.rstrip(".") + " " + e
    return text.strip() or text


def _run_on(text: str, rng: random.Random) -> str:
    """Join sentences the way hurried typists do: commas, 'and', 'so', or nothing at all."""

    def join(m: re.Match[str]) -> str:
        sep = rng.choice((", ", " and ", " ", ". ", " so ", ",, "))
        nxt = m.group(1)
        return sep + (nxt if sep == ". " or nxt == "I" else nxt.lower())

    return _SENTENCE_END.sub(join, text)


def _capitalise(text: str) -> str:
    """Sentence case, as careful typists write: capital I and a capital after each full stop."""
    text = re.sub(r"\bi\b", "I", text)
    text = re.sub(r"([.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return text[:1].upper() + text[1:]


__all__ = ["add_typos", "apply_style"]
