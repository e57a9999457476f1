"""`llm_judge`: any chat LLM as a guard, prompted with our rendered taxonomy; label + rationale.

The judge reads our policy (`taxonomy.render_policy`) and a numbered transcript with the target
user turn marked (`verdict.classification_messages`), and answers ``Safety:`` / ``Categories:`` /
``Rationale:``. p(unsafe) comes from the logprob of the verdict word when the server returns
logprobs (one greedy call per turn); otherwise from the share of unsafe votes over `k` sampled
answers (and the label from their majority, ties leaning unsafe). Answers with no verdict are
re-asked once and otherwise dropped; a turn with no valid answer at all is an error.

`LLMJudge.vote` is also the labeller of LLM-driven synthesis (`synth.llm`), which lets it see the
whole conversation (later turns as context only) and stores every vote on the turn.

Example:
    >>> guard = load_guard("llm_judge:model=Qwen/Qwen3-32B,base_url=http://localhost:8000/v1,k=5")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..conversation import Message, require_user_last
from ..errors import MindGuardError
from ..llm import ChatClient, Usage
from ..taxonomy import LABELS, SAFE, UNSAFE_LABELS
from ._base import Assessment, BaseGuard, make_assessment
from ._batching import FlatBatchMixin
from .openai_compat import make_client
from .verdict import FORMATS, classification_messages, parse_verdict, verdict_distribution_from_logprobs, verdict_p_unsafe

_FMT = FORMATS["mindguard"]


class JudgeFormatError(MindGuardError):
    """The judge never answered in the verdict format."""


def majority_label(votes: Sequence[str]) -> str:
    """The most common label; a tie leans unsafe (as clinicians do when in doubt), and between
    the two unsafe labels goes to the one listed first in the taxonomy."""
    if not votes:
        raise ValueError("no votes")
    counts = Counter(votes)
    top = max(counts.values())
    tied = [lab for lab in LABELS if counts.get(lab) == top]
    unsafe = [lab for lab in tied if lab in UNSAFE_LABELS]
    return unsafe[0] if unsafe else tied[0]


@dataclass
class Judgement:
    """What the judge said about one user turn: votes (one per valid sample), their rationales,
    the majority label, p(unsafe) and how it was obtained, and the tokens spent."""

    label: str
    votes: list[str]
    rationales: list[str | None]
    p_unsafe: float
    scored_from: str
    invalid: int = 0
    usage: Usage = field(default_factory=Usage)

    @property
    def rationale(self) -> str | None:
        """A rationale given with the majority label."""
        return next((r for v, r in zip(self.votes, self.rationales) if v == self.label and r), None)

    def shares(self) -> dict[str, float]:
        n = len(self.votes)
        return {lab: self.votes.count(lab) / n for lab in LABELS}


class LLMJudge:
    """Asks a chat LLM for verdicts under our policy; `vote` is the one entry point."""

    def __init__(self, client: ChatClient, k: int = 1, temperature: float = 0.7, scoring: str = "auto",
                 max_tokens: int = 256, top_logprobs: int = 10, seed: int = 0) -> None:
        if scoring not in ("auto", "logprobs", "votes"):
            raise MindGuardError(f"scoring must be auto, logprobs or votes, got {scoring!r}")
        if k < 1:
            raise MindGuardError(f"k (samples per turn) must be at least 1, got {k}")
        self.client = client
        self.k = int(k)
        self.temperature = float(temperature)
        self.scoring = scoring
        self.max_tokens = int(max_tokens)
        self.top_logprobs = int(top_logprobs)
        self.seed = int(seed)
        self.logprobs_offered: bool | None = None  # learnt from the first greedy answer

    def _ask(self, chat: list[dict[str, str]], temperature: float, seed: int, logprobs: bool) -> tuple[Any, Usage]:
        """One answer, re-asked once if it holds no verdict; (parsed or None, result, usage)."""
        used = Usage()
        res = None
        for attempt in range(2):
            res = self.client.complete(chat, temperature=temperature, max_tokens=self.max_tokens, logprobs=logprobs,
                                       top_logprobs=self.top_logprobs if logprobs else 0, seed=seed + 7919 * attempt)
            used = Usage(used.prompt_tokens + res.usage.prompt_tokens, used.completion_tokens + res.usage.completion_tokens)
            parsed = parse_verdict(res.text, _FMT)
            if parsed is not None:
                return (parsed, res), used
        return (None, res), used

    def vote(self, messages: Sequence[Message], target: int | None = None, k: int | None = None,
             seed: int | None = None) -> Judgement:
        """Judge the user turn at `target` (default: the last message) of `messages`; messages
        after the target are shown as context only. `k` overrides the number of samples."""
        chat = classification_messages(list(messages), target, with_rationale=True)
        base_seed = self.seed if seed is None else seed
        k = self.k if k is None else k
        total = Usage()
        if self.scoring == "logprobs" or (self.scoring == "auto" and self.logprobs_offered is not False):
            (parsed, res), total = self._ask(chat, 0.0, base_seed, logprobs=True)
            if res is not None and parsed is not None:
                self.logprobs_offered = res.logprobs is not None
            dist = verdict_distribution_from_logprobs(res.logprobs, _FMT) if (parsed and res.logprobs) else None
            if dist:
                p = verdict_p_unsafe(dist)
                return Judgement(parsed.label, [parsed.label], [parsed.rationale], p, "logprobs", 0, total)
            if self.scoring == "logprobs":
                raise MindGuardError("the judge's server returned no logprobs for the verdict; use scoring=votes")
            if k == 1 and parsed is not None:
                # one greedy sample is all a single vote would be: do not ask twice
                return Judgement(parsed.label, [parsed.label], [parsed.rationale], float(parsed.label != SAFE),
                                 "votes", 0, total)
        votes: list[str] = []
        rationales: list[str | None] = []
        invalid = 0
        for i in range(k):
            (parsed, _), used = self._ask(chat, self.temperature if k > 1 else 0.0, base_seed + i, logprobs=False)
            total = Usage(total.prompt_tokens + used.prompt_tokens, total.completion_tokens + used.completion_tokens)
            if parsed is None:
                invalid += 1
                continue
            votes.append(parsed.label)
            rationales.append(parsed.rationale)
        if not votes:
            raise JudgeFormatError(f"the judge gave no answer in the expected format in {k} samples "
                                 "(it must start with 'Safety: Safe' or 'Safety: Unsafe')")
        p = sum(v in UNSAFE_LABELS for v in votes) / len(votes)
        return Judgement(majority_label(votes), votes, rationales, p, "votes", invalid, total)


class LLMJudgeGuard(FlatBatchMixin, BaseGuard):
    """The judge as a guard (see module docstring).

    Args:
        model, base_url, api_key_env, timeout: the OpenAI-compatible endpoint of the judge LLM.
        k: samples per turn when scoring by votes.
        temperature: sampling temperature for votes.
        scoring: "auto" (logprobs when offered, else votes), "logprobs" or "votes".
        concurrency: turns judged at once.
        disable_thinking: send vLLM's `chat_template_kwargs={"enable_thinking": false}` (Qwen3 models).
        client: a ready `ChatClient` instead of model/base_url.
    """

    def __init__(self, model: str = "", base_url: str = "http://localhost:8000/v1", k: int = 3, temperature: float = 0.7,
                 scoring: str = "auto", threshold: float = 0.5, api_key_env: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, max_tokens: int = 256, disable_thinking: bool = False, name: str | None = None,
                 client: ChatClient | None = None) -> None:
        if not model and client is None:
            raise MindGuardError("llm_judge needs model=NAME and usually base_url=URL (any OpenAI-compatible chat model)")
        self.concurrency = max(1, int(concurrency))
        self.judge = LLMJudge(make_client(model, base_url, api_key_env, timeout, self.concurrency, client=client,
                                          disable_thinking=disable_thinking),
                              k=k, temperature=temperature, scoring=scoring, max_tokens=max_tokens)
        self.threshold = float(threshold)
        self.name = name or f"llm_judge:{(model or 'client').rstrip('/').split('/')[-1]}"

    def _one(self, messages: Sequence[Message]) -> Assessment:
        require_user_last(messages)
        j = self.judge.vote(messages)
        if j.scored_from == "logprobs":
            unsafe = [j.label] if j.label != SAFE else list(UNSAFE_LABELS)
            probs = {SAFE: 1 - j.p_unsafe, **{lab: j.p_unsafe / len(unsafe) if lab in unsafe else 0.0 for lab in UNSAFE_LABELS}}
        else:
            probs = j.shares()
        extra = {"votes": list(j.votes), "rationale": j.rationale, "scored_from": j.scored_from, "invalid": j.invalid}
        return make_assessment(probs, self.threshold, len(messages) - 1, self.name, (), extra)

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        if len(contexts) <= 1 or self.concurrency == 1:
            return [self._one(c) for c in contexts]
        with ThreadPoolExecutor(min(self.concurrency, len(contexts))) as pool:
            return list(pool.map(self._one, contexts))
