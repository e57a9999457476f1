"""`openai_compat`: a generative guard served behind an OpenAI-compatible API (vLLM, TGI, …),
scored from the logprobs the server returns.

The same models as `hf` — MindGuard-4B/8B, Qwen3Guard-Gen, Llama Guard 3, or any chat model with
our policy prompt — but the server applies the chat template and runs the model. One greedy
request per turn asks for the verdict with `logprobs`/`top_logprobs`; p(unsafe) is the probability
of the unsafe verdict word at the verdict position (`verdict.verdict_distribution_from_logprobs`),
and the categories the model names give the unsafe label. A server that returns no logprobs still
works: p(unsafe) is then 0 or 1 from the text, and `extra["scored_from"]` says so. Requests run
concurrently (a thread pool up to the client's concurrency limit).

For Llama Guard, serve it with our categories: `vllm serve meta-llama/Llama-Guard-3-8B
--chat-template llama_guard_mindguard.jinja` (the file `verdict.llama_guard_template()` writes);
`categories=default` reads Meta's stock categories instead (S1 violent crimes, S11 self-harm).

Example:
    >>> guard = load_guard("openai_compat:model=swordhealth/MindGuard-4B,base_url=http://localhost:8000/v1")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..conversation import Message, require_user_last
from ..errors import MindGuardError
from ..llm import ChatClient
from ._base import Assessment, BaseGuard, make_assessment
from ._batching import FlatBatchMixin
from .verdict import (
    FORMATS,
    LLAMAGUARD_DEFAULT_CODES,
    UNSAFE_V,
    VerdictFormat,
    classification_messages,
    family_of,
    labels_of_categories,
    parse_verdict,
    unsafe_split,
    verdict_distribution_from_logprobs,
    verdict_p_unsafe,
)

NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


def make_client(model: str, base_url: str, api_key_env: str | None, timeout: float, concurrency: int,
                max_retries: int = 4, client: ChatClient | None = None, disable_thinking: bool = False) -> ChatClient:
    """The given client, or an `OpenAICompatClient` for `model` at `base_url`. `disable_thinking`
    asks vLLM/SGLang to render Qwen3-style templates without a thinking block (other servers may
    reject the extra field, so it is opt-in)."""
    if client is not None:
        return client
    from ..llm.openai_compat import OpenAICompatClient

    return OpenAICompatClient(model, base_url=base_url, api_key_env=api_key_env or None, timeout=timeout,
                              max_retries=max_retries, max_concurrency=concurrency,
                              extra_body=NO_THINKING if disable_thinking else None)


class OpenAICompatGuard(FlatBatchMixin, BaseGuard):
    """A served generative guard.

    Args:
        model: the model id the server serves.
        base_url: API root with /v1 (default vLLM's http://localhost:8000/v1).
        family: "auto" (from the model name), "qwen3guard", "llamaguard" or "mindguard".
        api_key_env: environment variable holding the API key (none for a local vLLM).
        categories: for Llama Guard: "mindguard" (served with our template) or "default" (stock).
        controversial: how Qwen3Guard's "Controversial" counts ("unsafe" or "safe").
        top_logprobs: alternatives asked for at each position (vLLM allows up to 20).
        concurrency: requests in flight at once.
        disable_thinking: send vLLM's `chat_template_kwargs={"enable_thinking": false}` (Qwen3 models).
        client: a ready `ChatClient` (tests, custom transports); overrides model/base_url.
    """

    def __init__(self, model: str = "", base_url: str = "http://localhost:8000/v1", family: str = "auto",
                 threshold: float = 0.5, api_key_env: str | None = None, categories: str = "mindguard",
                 controversial: str = UNSAFE_V, top_logprobs: int = 20, max_tokens: int = 32, concurrency: int = 8,
                 timeout: float = 120.0, disable_thinking: bool = False, name: str | None = None,
                 client: ChatClient | None = None) -> None:
        if not model and client is None:
            raise MindGuardError("openai_compat needs model=NAME (the id the server serves) and usually base_url=URL")
        fam = family_of(model) if family == "auto" else family
        if fam not in FORMATS:
            raise MindGuardError(f"unknown guard family {family!r}; choose auto, {', '.join(FORMATS)}")
        if categories not in ("mindguard", "default"):
            raise MindGuardError(f"categories must be 'mindguard' or 'default', got {categories!r}")
        fmt = FORMATS[fam]
        if fam == "llamaguard" and categories == "default":
            fmt = replace(fmt, codes=LLAMAGUARD_DEFAULT_CODES)
        self.fmt: VerdictFormat = fmt
        self.family = fam
        self.threshold = float(threshold)
        self.controversial = controversial
        self.top_logprobs = int(top_logprobs)
        self.max_tokens = int(max_tokens)
        self.concurrency = max(1, int(concurrency))
        self.client = make_client(model, base_url, api_key_env, timeout, self.concurrency, client=client,
                                  disable_thinking=disable_thinking)
        self.name = name or f"openai_compat:{(model or 'client').rstrip('/').split('/')[-1]}"

    def request_messages(self, messages: Sequence[Message]) -> list[dict[str, str]]:
        """What is sent: the conversation itself for guard models (the server's template frames
        it), our policy prompt for the `mindguard` family."""
        if self.family == "mindguard":
            return classification_messages(list(messages))
        return [{"role": m.role, "content": m.content} for m in messages if m.role in ("user", "assistant")]

    def _one(self, messages: Sequence[Message]) -> Assessment:
        require_user_last(messages)
        res = self.client.complete(self.request_messages(messages), temperature=0.0, max_tokens=self.max_tokens,
                                   logprobs=True, top_logprobs=self.top_logprobs, seed=0)
        parsed = parse_verdict(res.text, self.fmt, self.controversial)
        if parsed is None:
            raise MindGuardError(f"{self.name}: the model's answer holds no verdict in the {self.fmt.name} format "
                                 f"({res.text[:60]!r}); is family={self.family} right for this model?")
        dist = verdict_distribution_from_logprobs(res.logprobs, self.fmt) if res.logprobs else None
        if dist:
            p = verdict_p_unsafe(dist, self.controversial)
            source = "logprobs"
        else:
            p = 0.0 if parsed.label == "safe" else 1.0
            source = "text"
        labels = labels_of_categories(parsed.categories, self.fmt)
        extra: dict[str, Any] = {"scored_from": source, "verdict_text": res.text.strip()}
        if dist:
            extra["verdict"] = {k: round(v, 6) for k, v in dist.items()}
        return make_assessment(unsafe_split(p, labels), self.threshold, len(messages) - 1, self.name, (), extra)

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        if len(contexts) <= 1 or self.concurrency == 1:
            return [self._one(c) for c in contexts]
        with ThreadPoolExecutor(min(self.concurrency, len(contexts))) as pool:
            return list(pool.map(self._one, contexts))
