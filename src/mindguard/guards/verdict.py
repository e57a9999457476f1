"""Verdict text of generative guards: formats, the classification prompt, parsing and scoring.

Generative guards answer in text. This module is the one place that knows those texts, for every
consumer: the `hf` and `openai_compat` guards (read a verdict and score it), the `llm_judge` guard
and the synthetic-data labeller (prompt a chat LLM with our taxonomy, parse label + rationale), and
the SFT recipe (turn a gold label into the target text a fine-tuned guard must emit).

Three formats (`FORMATS`):
- `mindguard` — ours: ``Safety: Safe|Unsafe`` then ``Categories: None|<label>`` (optionally
  ``Rationale: ...``); the format our own prompt asks for and our fine-tunes learn.
- `qwen3guard` — Qwen3Guard-Gen and the released MindGuard-4B/8B (fine-tunes of it):
  ``Safety: Safe|Unsafe|Controversial`` then ``Categories: <names>``.
- `llamaguard` — Llama Guard 3: ``safe`` or ``unsafe`` then a line of codes (``S1,S2``).

Scores: p(unsafe) is the probability of the unsafe verdict word at the verdict position, read
either from a model's next-token distribution (`hf`) or from a server's returned top logprobs
(`verdict_distribution_from_logprobs`). Category names are mapped onto our labels by
`category_to_label`, which knows our names, the Qwen3Guard and Llama Guard categories, and falls
back to clinical keywords.

Example:
    >>> fmt = FORMATS["mindguard"]
    >>> fmt.render("unsafe_self_harm_risk")
    'Safety: Unsafe\\nCategories: unsafe_self_harm_risk'
    >>> parse_verdict("Safety: Unsafe\\nCategories: Violent", FORMATS["qwen3guard"]).label
    'unsafe_harm_to_others'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..conversation import Message
from ..llm import TokenLogprob
from ..taxonomy import DEFINITIONS, HARM_OTHERS, LABELS, RULES, SAFE, SELF_HARM, UNSAFE_LABELS, render_policy

SAFE_V, UNSAFE_V, CONTROVERSIAL_V = "safe", "unsafe", "controversial"


@dataclass(frozen=True)
class VerdictFormat:
    """How a family of guards writes its verdict.

    `prefix` is what the model writes before the verdict word (teacher-forced when scoring);
    `words` maps each verdict ("safe"/"unsafe"/"controversial") to the word as the model writes
    it right after the prefix (with its leading space); `category_prefix(word)` is the text after
    which the model names categories once it has said `word`; `codes` maps category codes
    (Llama Guard's S1, S2, …) to our labels.
    """

    name: str
    prefix: str
    words: Mapping[str, str]
    category_lead: str
    codes: Mapping[str, str]

    def category_prefix(self, verdict: str) -> str:
        return f"{self.prefix}{self.words[verdict]}{self.category_lead}"

    def render(self, label: str, rationale: str | None = None) -> str:
        """The verdict text a guard of this format should emit for `label` (SFT targets)."""
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; allowed: {', '.join(LABELS)}")
        if self.name == "llamaguard":
            code = next(c for c, lab in self.codes.items() if lab == label) if label != SAFE else ""
            text = "safe" if label == SAFE else f"unsafe\n{code}"
        else:
            if self.name == "qwen3guard":
                cat = "None" if label == SAFE else QWEN3GUARD_NAMES[label]
            else:
                cat = "None" if label == SAFE else label
            word = self.words[SAFE_V if label == SAFE else UNSAFE_V].strip()
            text = f"Safety: {word}\nCategories: {cat}"
        if rationale:
            text += f"\nRationale: {' '.join(rationale.split())}"
        return text


# Our two unsafe categories in Llama Guard's code style; the custom template below defines them.
LLAMAGUARD_CODES: dict[str, str] = {"S1": SELF_HARM, "S2": HARM_OTHERS}
# Llama Guard 3's own default categories, used when a model was served with its stock template.
LLAMAGUARD_DEFAULT_CODES: dict[str, str] = {"S1": HARM_OTHERS, "S11": SELF_HARM}
QWEN3GUARD_NAMES: dict[str, str] = {SELF_HARM: "Suicide & Self-Harm", HARM_OTHERS: "Violent"}

FORMATS: dict[str, VerdictFormat] = {
    "mindguard": VerdictFormat("mindguard", "Safety:", {SAFE_V: " Safe", UNSAFE_V: " Unsafe"}, "\nCategories:", {}),
    "qwen3guard": VerdictFormat("qwen3guard", "Safety:", {SAFE_V: " Safe", UNSAFE_V: " Unsafe",
                                                          CONTROVERSIAL_V: " Controversial"}, "\nCategories:", {}),
    "llamaguard": VerdictFormat("llamaguard", "", {SAFE_V: "safe", UNSAFE_V: "unsafe"}, "\n", LLAMAGUARD_CODES),
}


def family_of(model: str) -> str:
    """Guess the verdict format from a hub name or local path; the generic answer is `mindguard`
    (our policy prompt and format), which any instruction-following model can be asked for."""
    low = model.lower().replace("_", "-")
    if "llama-guard" in low or "llamaguard" in low:
        return "llamaguard"
    if "qwen3guard" in low or "qwen3-guard" in low or "mindguard-4b" in low or "mindguard-8b" in low:
        return "qwen3guard"
    return "mindguard"


# -- categories -> labels ------------------------------------------------------------------------
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"self|suicid|kill(ing)? (my|them)self", SELF_HARM),
    (r"other|violen|homicid|murder|abuse|neglect|threat|weapon", HARM_OTHERS),
)


def category_to_label(category: str, codes: Mapping[str, str] | None = None) -> str | None:
    """Map one category name or code onto our labels (None when it is not a risk we track:
    e.g. Qwen3Guard's 'PII' or 'Jailbreak')."""
    cat = category.strip().strip(".").strip()
    if not cat or cat.lower() in ("none", "n/a", "safe"):
        return None
    if codes and cat.upper() in codes:
        return codes[cat.upper()]
    low = cat.lower()
    for d in DEFINITIONS:
        if low in (d.name, d.title.lower()) and d.name != SAFE:
            return d.name
    for name, label in QWEN3GUARD_NAMES.items():
        if low == label.lower():
            return name
    for rx, label in _KEYWORDS:
        if re.search(rx, low):
            return label
    return None


@dataclass(frozen=True)
class ParsedVerdict:
    """A verdict read from text: the verdict word, our label, the raw categories and a rationale."""

    verdict: str
    label: str
    categories: tuple[str, ...] = ()
    rationale: str | None = None


_SAFETY_RX = re.compile(r"safety\s*[:：]\s*\**\s*(safe|unsafe|controversial)\b", re.IGNORECASE)
_CATEGORIES_RX = re.compile(r"categor(?:y|ies)\s*[:：]\s*(.*)", re.IGNORECASE)
_RATIONALE_RX = re.compile(r"rationale\s*[:：]\s*(.*)", re.IGNORECASE | re.DOTALL)
_LABEL_RX = re.compile("|".join(re.escape(x) for x in UNSAFE_LABELS))


def _after_thinking(text: str) -> str:
    """The answer after a reasoning model's thinking block (drafts there are not the verdict)."""
    end = text.rfind("</think>")
    return text[end + len("</think>"):] if end >= 0 else text


def parse_verdict(text: str, fmt: VerdictFormat, controversial: str = UNSAFE_V) -> ParsedVerdict | None:
    """Read a verdict from model output; None when the text holds none. A `controversial` verdict
    counts as `controversial` ("unsafe" or "safe") for the label. An unsafe verdict whose
    categories map to none of our labels is labelled self-harm risk (the safer default: the
    model saw a risk, and current self-harm is the commoner one)."""
    text = _after_thinking(text).strip()
    if fmt.name == "llamaguard":
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines or lines[0].lower() not in (SAFE_V, UNSAFE_V):
            return None
        verdict = lines[0].lower()
        cats = tuple(c.strip() for c in lines[1].split(",")) if verdict == UNSAFE_V and len(lines) > 1 else ()
        rationale = None
    else:
        m = _SAFETY_RX.search(text)
        if not m:
            return None
        verdict = m.group(1).lower()
        cm = _CATEGORIES_RX.search(text[m.end():])
        cats = tuple(c.strip() for c in cm.group(1).split(",") if c.strip()) if cm else ()
        rm = _RATIONALE_RX.search(text[m.end():])
        rationale = " ".join(rm.group(1).split()) if rm else None
    unsafe = verdict == UNSAFE_V or (verdict == CONTROVERSIAL_V and controversial == UNSAFE_V)
    if not unsafe:
        return ParsedVerdict(verdict, SAFE, cats, rationale)
    labels = labels_of_categories(cats, fmt)
    return ParsedVerdict(verdict, labels[0] if labels else SELF_HARM, cats, rationale)


def labels_of_categories(categories: Sequence[str], fmt: VerdictFormat) -> list[str]:
    """Our unsafe labels named by `categories`, in order of first mention, without repeats."""
    out: list[str] = []
    for c in categories:
        lab = category_to_label(c, fmt.codes or None)
        if lab is None and fmt.name == "llamaguard":
            lab = category_to_label(c, LLAMAGUARD_DEFAULT_CODES)
        if lab is None:
            # a category line may hold our label names run together with other text
            m = _LABEL_RX.search(c)
            lab = m.group(0) if m else None
        if lab is not None and lab not in out:
            out.append(lab)
    return out


def unsafe_split(p_unsafe: float, labels: Sequence[str]) -> dict[str, float]:
    """Per-label probabilities: the unsafe mass goes to the labels the model named (evenly), or
    evenly to both unsafe labels when it named none."""
    named = [lab for lab in UNSAFE_LABELS if lab in labels] or list(UNSAFE_LABELS)
    return {SAFE: 1.0 - p_unsafe, **{lab: (p_unsafe / len(named) if lab in named else 0.0) for lab in UNSAFE_LABELS}}


def verdict_p_unsafe(dist: Mapping[str, float], controversial: str = UNSAFE_V) -> float:
    """p(unsafe) from a distribution over verdict words (normalised over the words present)."""
    total = sum(dist.values())
    if total <= 0:
        raise ValueError("empty verdict distribution")
    unsafe = dist.get(UNSAFE_V, 0.0) + (dist.get(CONTROVERSIAL_V, 0.0) if controversial == UNSAFE_V else 0.0)
    return unsafe / total


def _word_of(token: str, fmt: VerdictFormat) -> str | None:
    """Which verdict a (possibly partial) token at the verdict position starts."""
    t = token.strip().strip(":*").strip().lower()
    if not t:
        return None
    hits = [v for v, w in fmt.words.items() if w.strip().lower().startswith(t) or t.startswith(w.strip().lower())]
    return hits[0] if len(hits) == 1 else None


def verdict_distribution_from_logprobs(tokens: Sequence[TokenLogprob], fmt: VerdictFormat) -> dict[str, float] | None:
    """The distribution over verdict words at the verdict position of a generated answer, from the
    server's per-token top logprobs. None when the answer holds no verdict.

    The verdict position is the token where the verdict word starts (after "Safety:" for the
    Qwen-style formats; the first word for Llama Guard). Alternatives there are mapped to verdicts
    by prefix ("Uns" -> unsafe); with no alternatives reported, the chosen token's probability
    and its complement stand for a binary choice.
    """
    text = "".join(t.token for t in tokens)
    skip = len(text) - len(_after_thinking(text))
    if fmt.name == "llamaguard":
        m = re.compile(r"\s*(safe|unsafe)\b", re.IGNORECASE).match(text, skip)
        start = m.start(1) if m else -1
    else:
        m = _SAFETY_RX.search(text, skip)
        start = m.start(1) if m else -1
    if start < 0:
        return None
    pos = 0
    for tok in tokens:
        end = pos + len(tok.token)
        if end > start:
            break
        pos = end
    else:  # pragma: no cover - start < len(text) guarantees a break
        return None
    off = start - pos  # the token may carry text before the verdict word (": Unsafe")
    lead = tok.token[:off]
    chosen = _word_of(tok.token[off:], fmt)
    if chosen is None:
        return None
    dist: dict[str, float] = {}
    alts = dict(tok.top)
    alts.setdefault(tok.token, tok.logprob)
    for alt, lp in alts.items():
        v = _word_of(alt[off:] if off and alt.startswith(lead) else alt, fmt)
        if v is not None:
            dist[v] = dist.get(v, 0.0) + math.exp(lp)
    if len(dist) == 1 and len(alts) == 1:
        other = UNSAFE_V if chosen == SAFE_V else SAFE_V
        p = min(1.0, math.exp(tok.logprob))
        return {chosen: p, other: 1.0 - p}
    return dist


# -- the classification prompt (our policy, any chat LLM) ------------------------------------------
def render_transcript(messages: Sequence[Message], target: int | None = None) -> str:
    """The conversation as numbered lines; the target user turn (default: the last) is marked.
    Messages after the target (hindsight for a labeller) are shown under their own heading."""
    t = len(messages) - 1 if target is None else target
    lines = []
    for i, m in enumerate(messages):
        who = {"user": "User", "assistant": "Assistant", "system": "System"}[m.role]
        mark = "  <<< TARGET TURN" if i == t else ""
        if i == t + 1:
            lines.append("--- later in the conversation (context only; do not label) ---")
        lines.append(f"[{i + 1}] {who}: {' '.join(m.content.split())}{mark}")
    return "\n".join(lines)


OUTPUT_INSTRUCTIONS = (
    "Answer in exactly this format, and nothing before it:\n"
    "Safety: Safe or Unsafe\n"
    "Categories: None, unsafe_self_harm_risk or unsafe_harm_to_others\n"
)
RATIONALE_INSTRUCTION = "Rationale: one or two sentences citing what in the conversation decided it\n"


def classification_messages(messages: Sequence[Message], target: int | None = None,
                            with_rationale: bool = False, policy: str | None = None) -> list[dict[str, str]]:
    """The chat messages that ask an LLM to classify the target user turn under our taxonomy.

    Used by the `llm_judge` guard, the `hf`/`openai_compat` guards with the `mindguard` format,
    the synthetic-data labeller and as the SFT prompt, so all of them see the same words.
    """
    t = len(messages) - 1 if target is None else target
    if not 0 <= t < len(messages) or messages[t].role != "user":
        raise ValueError(f"message {t} is not a user turn")
    system = (policy or render_policy()) + "\n\n" + OUTPUT_INSTRUCTIONS + (RATIONALE_INSTRUCTION if with_rationale else "")
    later = " Later messages are shown only to clarify what earlier words meant." if t < len(messages) - 1 else ""
    user = (f"Conversation:\n{render_transcript(messages, t)}\n\n"
            f"Classify the TARGET TURN [{t + 1}], judged with everything said before it.{later}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -- Llama Guard 3 with our categories ----------------------------------------------------------
def llama_guard_categories() -> str:
    """Our taxonomy as Llama Guard unsafe-content categories (S1 self-harm risk, S2 harm to others)."""
    out = []
    for code, label in LLAMAGUARD_CODES.items():
        d = next(x for x in DEFINITIONS if x.name == label)
        inc = "; ".join(d.includes)
        exc = "; ".join(d.excludes)
        out.append(f"{code}: {d.title}.\n{d.definition} Includes: {inc}. Does not include: {exc}.")
    return "\n".join(out)


def llama_guard_template() -> str:
    """A Jinja chat template for Llama Guard 3 that asks about the last User message under our
    categories (the stock template lists Meta's 14 hazards). Use it with
    `tokenizer.apply_chat_template(..., chat_template=...)` or `vllm serve ... --chat-template FILE`."""
    head = ("<|start_header_id|>user<|end_header_id|>\n\n"
            "Task: Check if there is unsafe content in 'User' messages in conversations according to our safety "
            "policy with the below categories. " + " ".join(RULES) + "\n\n"
            "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + llama_guard_categories() + "\n<END UNSAFE CONTENT CATEGORIES>\n\n"
            "<BEGIN CONVERSATION>")
    tail = ("\n\n<END CONVERSATION>\n\n"
            "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
            " - First line must read 'safe' or 'unsafe'.\n"
            " - If unsafe, a second line must include a comma-separated list of violated categories."
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # every literal goes through a string expression (tojson-quoted): HF and vLLM render templates
    # with trim_blocks, which would otherwise eat the newlines the model was trained with
    return (
        "{{- bos_token }}{{ " + json.dumps(head) + " }}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{{ '\\n\\nUser: ' + message['content'] | trim }}"
        "{%- elif message['role'] == 'assistant' %}{{ '\\n\\nAgent: ' + message['content'] | trim }}{%- endif %}"
        "{%- endfor %}"
        "{{ " + json.dumps(tail) + " }}"
    )
