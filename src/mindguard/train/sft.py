"""Supervised examples for generative guards: one per labelled user turn, in the base model's chat format.

Each example is the conversation up to a labelled user turn, rendered exactly as the `hf` guard
renders it when scoring (`guards.hf.PromptRenderer`: our taxonomy policy as system text for the
`mindguard` format, the model's stock template for `qwen3guard`, our Llama Guard 3 template for
`llamaguard`), ending with the verdict prefix ("Safety:"); the target is the rest of the verdict text
for the gold label (`verdict.FORMATS[...].render`) and the end-of-turn token. Training on these and
scoring with `hf` therefore see the same tokens. A context that would not fit in `max_length`
tokens (4,096 by default) loses its oldest messages, never the target turn; a target turn too long
to fit on its own is left out and counted. `balance` subsamples (or repeats) turns to reach a
chosen share of unsafe examples before any text is rendered, so that discarded turns cost nothing.

Example:
    >>> from mindguard.train.sft import target_text, label_of_target
    >>> target_text("unsafe_harm_to_others", "qwen3guard")
    'Safety: Unsafe\\nCategories: Violent'
    >>> label_of_target('Safety: Unsafe\\nCategories: Violent', "qwen3guard")
    'unsafe_harm_to_others'
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conversation import Conversation
from ..errors import DataError, MindGuardError
from ..guards.hf import PromptRenderer
from ..guards.verdict import FORMATS, parse_verdict
from ..taxonomy import LABELS, is_unsafe

MAX_LENGTH = 4096
SAMPLING_METHODS = ("downsample", "upsample")


# -- labels <-> verdict text -----------------------------------------------------------------------
def target_text(label: str, family: str = "mindguard") -> str:
    """The whole verdict text a guard of `family` is trained to write for `label`."""
    if family not in FORMATS:
        raise MindGuardError(f"unknown verdict format {family!r}; choose {', '.join(FORMATS)}")
    return FORMATS[family].render(label)


def label_of_target(text: str, family: str = "mindguard") -> str:
    """Our label read back from a verdict text (the inverse of `target_text`)."""
    parsed = parse_verdict(text, FORMATS[family])
    if parsed is None:
        raise ValueError(f"no {family} verdict in {text!r}")
    return parsed.label


# -- which turns become examples ---------------------------------------------------------------
@dataclass(frozen=True)
class TurnRef:
    """A labelled user turn: the conversation's position in the input list and the message index."""

    conversation: int
    message_index: int
    label: str
    hard_negative: bool = False


def labelled_turns(conversations: Sequence[Conversation]) -> list[TurnRef]:
    """Every labelled user turn, in data order."""
    return [TurnRef(k, i, str(c.messages[i].label), c.messages[i].hard_negative)
            for k, c in enumerate(conversations) for i in c.labelled_turns()]


@dataclass(frozen=True)
class Sampling:
    """Class-balance controls.

    `unsafe_share`: the share of unsafe examples to reach (None keeps the data as it is). With
    `downsample` the over-represented side (usually safe turns) is randomly subsampled and nothing
    is repeated; with `upsample` the under-represented side is repeated (whole copies, then a random
    remainder) and nothing is dropped. `keep_hard_negatives`: when safe turns are dropped, hard
    negatives (figures of speech, past attempts, worry about others: the turns that teach the guard
    what *not* to flag) are kept first. `seed` makes the choice reproducible.
    """

    unsafe_share: float | None = None
    method: str = "downsample"
    keep_hard_negatives: bool = True
    seed: int = 13

    def __post_init__(self) -> None:
        if self.unsafe_share is not None and not 0.0 < self.unsafe_share < 1.0:
            raise MindGuardError(f"the unsafe share must be between 0 and 1 (exclusive), got {self.unsafe_share}")
        if self.method not in SAMPLING_METHODS:
            raise MindGuardError(f"unknown sampling method {self.method!r}; choose {', '.join(SAMPLING_METHODS)}")


def _pick(pool: list[TurnRef], n: int, rng: random.Random, hard_first: bool) -> list[TurnRef]:
    hard = [r for r in pool if r.hard_negative] if hard_first else []
    rest = [r for r in pool if not r.hard_negative] if hard_first else list(pool)
    rng.shuffle(hard)
    rng.shuffle(rest)
    return (hard + rest)[:n]


def _repeat(pool: list[TurnRef], n: int, rng: random.Random) -> list[TurnRef]:
    whole, remainder = divmod(n, len(pool))
    return pool * whole + rng.sample(pool, remainder)


def balance(refs: Sequence[TurnRef], sampling: Sampling) -> list[TurnRef]:
    """The turns to train on, with the unsafe share `sampling` asks for (in data order; repeated
    turns sit next to each other)."""
    if sampling.unsafe_share is None:
        return list(refs)
    unsafe = [r for r in refs if is_unsafe(r.label)]
    safe = [r for r in refs if not is_unsafe(r.label)]
    if not unsafe or not safe:
        raise DataError("class balancing needs both safe and unsafe labelled turns in the training data")
    t = sampling.unsafe_share
    rng = random.Random(sampling.seed)
    share = len(unsafe) / (len(unsafe) + len(safe))
    if sampling.method == "downsample":
        if share < t:
            safe = _pick(safe, max(1, round(len(unsafe) * (1 - t) / t)), rng, sampling.keep_hard_negatives)
        elif share > t:
            unsafe = _pick(unsafe, max(1, round(len(safe) * t / (1 - t))), rng, False)
    elif share < t:
        unsafe = _repeat(unsafe, round(len(safe) * t / (1 - t)), rng)
    elif share > t:
        safe = _repeat(safe, round(len(unsafe) * (1 - t) / t), rng)
    return sorted(safe + unsafe, key=lambda r: (r.conversation, r.message_index))


# -- rendering ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTExample:
    """One supervised example: prompt and completion as text and as the token ids trained on."""

    conversation_id: str
    message_index: int
    label: str
    prompt: str
    completion: str
    prompt_ids: list[int] = field(repr=False)
    completion_ids: list[int] = field(repr=False)
    first_message: int = 0  # index of the oldest message kept (0: the whole context)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    def to_dict(self) -> dict[str, Any]:
        """TRL's prompt-completion record (plus provenance), for inspection or other trainers."""
        return {"prompt": self.prompt, "completion": self.completion, "conversation_id": self.conversation_id,
                "message_index": self.message_index, "label": self.label, "first_message": self.first_message}


class ExampleBuilder:
    """Renders labelled turns as examples for one tokenizer, verdict format and policy text.

    Args:
        tokenizer: the base model's tokenizer (its chat template formats the prompt).
        family: verdict format: "mindguard" (our policy prompt and labels), "qwen3guard" (stock
            Qwen3Guard-Gen template, categories "Suicide & Self-Harm" / "Violent") or "llamaguard".
        policy: custom policy text for the `mindguard` prompt (default: `taxonomy.render_policy()`).
        max_length: most tokens of prompt + completion.
    """

    def __init__(self, tokenizer: Any, family: str = "mindguard", policy: str | None = None,
                 max_length: int = MAX_LENGTH) -> None:
        if family not in FORMATS:
            raise MindGuardError(f"unknown verdict format {family!r}; choose {', '.join(FORMATS)}")
        if not tokenizer.eos_token:
            raise MindGuardError("the tokenizer has no end-of-sequence token to close the verdict with")
        self.fmt = FORMATS[family]
        self.family = family
        self.policy = policy
        self.max_length = int(max_length)
        self.prompter = PromptRenderer(tokenizer, self.fmt, policy)
        self.eos = str(tokenizer.eos_token)
        self._completions: dict[str, tuple[str, list[int]]] = {}
        for label in LABELS:
            # the prompt already ends with the verdict prefix: the target is the rest of the verdict
            text = target_text(label, family)[len(self.fmt.prefix):] + self.eos
            self._completions[label] = (text, self.prompter.encode(text))
        longest = max(len(ids) for _, ids in self._completions.values())
        if self.max_length <= longest:
            raise MindGuardError(f"max length {self.max_length} leaves no room for a prompt")

    def completion(self, label: str) -> str:
        """The target text for `label`: the verdict after its prefix, then the end-of-sequence token."""
        return self._completions[label][0]

    def build(self, conversation: Conversation, message_index: int) -> SFTExample | None:
        """The example for the labelled user turn at `message_index`, or None when that turn alone
        (with the fixed prompt text) does not fit in `max_length` tokens."""
        msg = conversation.messages[message_index]
        if msg.role != "user" or msg.label is None:
            raise DataError(f"message {message_index} of conversation {conversation.id!r} is not a labelled user turn")
        completion, completion_ids = self._completions[msg.label]
        budget = self.max_length - len(completion_ids)
        prompt, start = self.prompter.render(conversation.prefix(message_index), budget)
        prompt_ids = self.prompter.encode(prompt)
        if len(prompt_ids) > budget:
            return None
        return SFTExample(conversation.id, message_index, msg.label, prompt, completion, prompt_ids,
                          list(completion_ids), start)

    def iter_examples(self, conversations: Sequence[Conversation], refs: Iterable[TurnRef],
                      stats: BuildStats | None = None) -> Iterator[SFTExample]:
        """Examples for `refs` in order; turns that cannot fit are skipped (and counted in `stats`)."""
        for r in refs:
            ex = self.build(conversations[r.conversation], r.message_index)
            if stats is not None:
                stats.add(r.label, ex)
            if ex is not None:
                yield ex


@dataclass
class BuildStats:
    """What the builder made: examples per label, contexts that lost messages, turns left out."""

    examples: Counter[str] = field(default_factory=Counter)
    too_long: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    tokens: int = 0
    longest: int = 0

    def add(self, label: str, example: SFTExample | None) -> None:
        if example is None:
            self.too_long[label] += 1
            return
        self.examples[label] += 1
        self.truncated += example.first_message > 0
        self.tokens += example.n_tokens
        self.longest = max(self.longest, example.n_tokens)

    @property
    def n_examples(self) -> int:
        return sum(self.examples.values())

    def to_dict(self) -> dict[str, Any]:
        n = self.n_examples
        return {"examples": n, "by_label": {lab: self.examples[lab] for lab in LABELS},
                "unsafe_share": round(sum(v for k, v in self.examples.items() if is_unsafe(k)) / n, 4) if n else None,
                "truncated_contexts": self.truncated, "left_out_too_long": sum(self.too_long.values()),
                "mean_tokens": round(self.tokens / n, 1) if n else None, "max_tokens": self.longest}

    def describe(self) -> str:
        d = self.to_dict()
        labels = ", ".join(f"{k} {v}" for k, v in d["by_label"].items())
        share = "—" if d["unsafe_share"] is None else f"{d['unsafe_share']:.1%}"
        return (f"{d['examples']} examples ({labels}; unsafe {share}), {d['truncated_contexts']} contexts "
                f"shortened to fit, {d['left_out_too_long']} turns too long to fit, tokens mean {d['mean_tokens']} "
                f"max {d['max_tokens']}")


def write_examples(path: str | Path, examples: Iterable[SFTExample]) -> int:
    """Write examples as JSONL in TRL's prompt-completion form; returns how many."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
