"""Phrase banks for the offline two-agent engine, and the small template language they are written in.

Material is plain text (`synth/material/*.txt`) so that clinicians and writers can extend it without
touching code. A file holds banks; each bank is a header line `## key` followed by one phrase per
line. Directives inside a bank: `@label LABEL` (the label turns drawn from the bank must carry; the
engine refuses to use the bank in a stage with another label) and `@rationale TEXT` (the one-line
rationale given to every turn drawn from it; a phrase may override it with `phrase || rationale`).
A phrase may start with tags in parentheses, `(kid,!job) ...`, to fit only speakers who have (or,
with `!`, lack) those tags: persona attributes, locale, problem, the thread of risk under way.
Templates use `[a|b|c]` for an inline choice (`[a|]` makes `a` optional; choices nest),
`{slot}` / `{slot:form}` for a slot filled by the caller (a person's name or pronoun, a place, a
time ...) and `{@bank.key}` to splice in a phrase from another bank. Expansion is driven by a
`random.Random`, so the same seed gives the same text.

Example:
    >>> m = Material.from_text("## greet\\n[Hi|Hey] {name}[!|.]\\n")
    >>> m.render("greet", random.Random(1), lambda slot: "Ana")
    'Hi Ana.'
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import DataError
from ..taxonomy import LABELS

SlotResolver = Callable[[str], str]

_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.!?;:])")
_REQUIRES = re.compile(r"^\(([!a-z_0-9, ]+)\)\s")
_LABEL_ALIASES = {"safe": "safe", "self": "unsafe_self_harm_risk", "other": "unsafe_harm_to_others"}


@dataclass(frozen=True)
class Phrase:
    """One template line, the rationale a turn written from it carries (if any), and the tags the
    speaker must have for it to fit (`(kid,!job) text` is only for people with a child and no job)."""

    text: str
    rationale: str | None = None
    requires: tuple[str, ...] = ()

    def fits(self, tags: frozenset[str]) -> bool:
        return all((t[1:] not in tags) if t.startswith("!") else (t in tags) for t in self.requires)


@dataclass(frozen=True)
class Bank:
    """A named list of phrases, optionally tied to one label."""

    key: str
    phrases: tuple[Phrase, ...]
    label: str | None = None
    rationale: str | None = None
    source: str = ""


class Material:
    """All banks, addressable by key; renders templates with a caller-supplied slot resolver."""

    def __init__(self, banks: dict[str, Bank]) -> None:
        self.banks = banks

    # -- loading -----------------------------------------------------------------------------
    @staticmethod
    def from_text(text: str, source: str = "<text>") -> Material:
        return Material(_parse(text, source, {}))

    @staticmethod
    def load(paths: Iterable[str | Path] | None = None) -> Material:
        """Read the packaged material (default) or the given files; later files extend earlier banks."""
        banks: dict[str, Bank] = {}
        if paths is None:
            root = resources.files("mindguard.synth") / "material"
            for entry in sorted(root.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".txt"):
                    banks = _parse(entry.read_text(encoding="utf-8"), entry.name, banks)
        else:
            for p in paths:
                path = Path(p)
                if not path.is_file():
                    raise DataError(f"{path}: no such material file")
                banks = _parse(path.read_text(encoding="utf-8"), str(path), banks)
        return Material(banks)

    # -- access ------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.banks and bool(self.banks[key].phrases)

    def bank(self, key: str) -> Bank:
        try:
            return self.banks[key]
        except KeyError:
            raise DataError(f"no material bank {key!r}") from None

    def first(self, *keys: str) -> str | None:
        """The first of `keys` that names a non-empty bank."""
        for k in keys:
            if self.has(k):
                return k
        return None

    def usable(self, key: str, tags: frozenset[str] | None = None) -> bool:
        """Whether bank `key` exists and has a phrase that fits `tags`."""
        if not self.has(key):
            return False
        return tags is None or any(p.fits(tags) for p in self.banks[key].phrases)

    def pick(self, key: str, rng: random.Random, avoid: set[str] | None = None,
             tags: frozenset[str] | None = None) -> tuple[Phrase, Bank]:
        """A random phrase of bank `key` that fits `tags`, preferring ones whose text is not in `avoid`."""
        b = self.bank(key)
        options = b.phrases
        if tags is not None:
            options = tuple(p for p in options if p.fits(tags)) or options
        if avoid:
            fresh = tuple(p for p in options if p.text not in avoid)
            options = fresh or options
        return options[rng.randrange(len(options))], b

    def render(self, key: str, rng: random.Random, resolve: SlotResolver, avoid: set[str] | None = None,
               tags: frozenset[str] | None = None) -> str:
        """Pick a phrase from bank `key` and expand it."""
        phrase, _ = self.pick(key, rng, avoid, tags)
        return self.expand(phrase.text, rng, resolve, tags=tags)

    def expand(self, template: str, rng: random.Random, resolve: SlotResolver, depth: int = 0,
               tags: frozenset[str] | None = None) -> str:
        """Expand choices, slots and bank references in `template` (`tags` filter referenced banks)."""
        if depth > 8:
            raise DataError(f"material template nests too deeply (a bank refers to itself?): {template!r}")
        out: list[str] = []
        i, n = 0, len(template)
        while i < n:
            c = template[i]
            if c == "[":
                j = _matching(template, i)
                options = _split_top(template[i + 1 : j])
                out.append(self.expand(options[rng.randrange(len(options))], rng, resolve, depth + 1, tags))
                i = j + 1
            elif c == "{":
                j = template.find("}", i)
                if j < 0:
                    raise DataError(f"unclosed '{{' in material template {template!r}")
                name = template[i + 1 : j].strip()
                if name.startswith("@"):
                    phrase, _ = self.pick(name[1:], rng, tags=tags)
                    out.append(self.expand(phrase.text, rng, resolve, depth + 1, tags))
                else:
                    out.append(self.expand(resolve(name), rng, resolve, depth + 1, tags))
                i = j + 1
            else:
                out.append(c)
                i += 1
        return tidy("".join(out))


def tidy(text: str) -> str:
    """Collapse the double spaces and stray spaces before punctuation that optional parts leave."""
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip()


def _matching(s: str, i: int) -> int:
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "[":
            depth += 1
        elif s[j] == "]":
            depth -= 1
            if depth == 0:
                return j
    raise DataError(f"unclosed '[' in material template {s!r}")


def _split_top(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse(text: str, source: str, banks: dict[str, Bank]) -> dict[str, Bank]:
    banks = dict(banks)
    key: str | None = None
    phrases: list[Phrase] = []
    label: str | None = None
    rationale: str | None = None

    def close() -> None:
        if key is None:
            return
        old = banks.get(key)
        if old is not None and old.label != label and label is not None and old.label is not None:
            raise DataError(f"{source}: bank {key!r} is labelled {label} here but {old.label} in {old.source}")
        merged = (old.phrases if old else ()) + tuple(phrases)
        banks[key] = Bank(key, merged, label or (old.label if old else None), rationale or (old.rationale if old else None),
                          old.source if old else source)

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") and not line.startswith("##"):
            continue
        if line.startswith("##"):
            close()
            key = line[2:].strip()
            if not key or " " in key:
                raise DataError(f"{source}:{n}: a bank header needs one key without spaces, got {line!r}")
            phrases, label, rationale = [], None, None
            continue
        if key is None:
            raise DataError(f"{source}:{n}: text before the first '## bank' header")
        if line.startswith("@label "):
            value = line[len("@label "):].strip()
            label = _LABEL_ALIASES.get(value, value)
            if label not in LABELS:
                raise DataError(f"{source}:{n}: unknown label {value!r}; allowed: safe, self, other or {', '.join(LABELS)}")
            continue
        if line.startswith("@rationale "):
            rationale = line[len("@rationale "):].strip()
            continue
        if line.startswith("@"):
            raise DataError(f"{source}:{n}: unknown directive {line.split()[0]!r} (allowed: @label, @rationale)")
        text_part, _, why = line.partition("||")
        text_part = text_part.strip()
        requires: tuple[str, ...] = ()
        m = _REQUIRES.match(text_part)
        if m:
            requires = tuple(t.strip() for t in m.group(1).split(",") if t.strip())
            text_part = text_part[m.end():].strip()
        if text_part.count("[") != text_part.count("]") or text_part.count("{") != text_part.count("}"):
            raise DataError(f"{source}:{n}: unbalanced brackets in {text_part!r}")
        if not text_part:
            raise DataError(f"{source}:{n}: empty phrase")
        phrases.append(Phrase(text_part, why.strip() or None, requires))
    close()
    return banks
