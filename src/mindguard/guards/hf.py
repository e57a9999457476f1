"""`hf`: generative guards run locally through `transformers` — MindGuard-4B/8B, Qwen3Guard-Gen,
Llama Guard 3, or any instruction-tuned causal LM prompted with our policy.

How a turn is scored: the context (every message up to the target user turn) goes through the
model's chat template — the stock one for Qwen3Guard/MindGuard, a Llama Guard 3 template listing
*our* categories for Llama Guard, and our policy prompt (`verdict.classification_messages`) for any
other model. The text the model writes before its verdict ("Safety:") is appended, one forward
pass gives the next-token distribution, and p(unsafe) is the probability of the unsafe verdict
word, normalised over the verdict words (when their first tokens differ; otherwise each word's
full sequence probability is computed). For flagged turns the model then names categories by
greedy decoding after the forced unsafe verdict, and `verdict.category_to_label` maps them to our
labels. Contexts longer than `max_context_tokens` lose their oldest messages, never the target.

Models trained with `mindguard train-llm` load the same way: their directory (a full model, or a
LoRA adapter over its base, loaded with `peft`) carries `mindguard_sft.json`, which names the verdict
format and policy text they were trained with, so `hf:DIR` renders exactly the training prompts.
`PromptRenderer` is the one place those prompts are written, for scoring and for the SFT recipe.

Example:
    >>> guard = load_guard("hf:swordhealth/MindGuard-4B")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..conversation import Message, require_user_last
from ..errors import MindGuardError, require
from ._base import Assessment, BaseGuard, make_assessment
from ._batching import FlatBatchMixin
from .verdict import (
    FORMATS,
    UNSAFE_V,
    VerdictFormat,
    classification_messages,
    family_of,
    labels_of_categories,
    llama_guard_template,
    unsafe_split,
    verdict_p_unsafe,
)

SFT_META = "mindguard_sft.json"  # written by `mindguard train-llm` next to the weights


def _chat_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def read_sft_meta(model: str) -> dict[str, Any]:
    """The training record of a model directory written by `mindguard train-llm` ({} otherwise)."""
    path = Path(model) / SFT_META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MindGuardError(f"{path}: unreadable training record ({exc})") from exc
    if not isinstance(meta, dict):
        raise MindGuardError(f"{path}: the training record must be a JSON object")
    return meta


class PromptRenderer:
    """The exact text a generative guard reads for a target user turn, in the model's chat format.

    `mindguard` format: our policy (or custom `policy` text) as the system message and the numbered
    transcript (`verdict.classification_messages`); `qwen3guard`: the conversation through the
    model's stock chat template; `llamaguard`: our Llama Guard 3 template. Every prompt ends with the
    text the model writes before its verdict word ("Safety:"), so the next token is the verdict.
    Used by the `hf` guard to score and by the SFT recipe to build training prompts.
    """

    def __init__(self, tokenizer: Any, fmt: VerdictFormat, policy: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.policy = policy
        if fmt.name == "qwen3guard" and not tokenizer.chat_template:
            raise MindGuardError("the tokenizer has no chat template; use family=mindguard")

    def template(self, messages: Sequence[Message]) -> str:
        """The chat-formatted prompt for the last message of `messages`, without the verdict prefix."""
        if self.fmt.name == "mindguard":
            chat = classification_messages(list(messages), policy=self.policy)
            if not self.tokenizer.chat_template:
                raise MindGuardError("this tokenizer has no chat template to format the policy prompt with")
            # enable_thinking=False: Qwen3-style templates then open the answer directly, where we
            # force the verdict prefix (templates without the switch ignore it)
            return str(self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                                          enable_thinking=False))
        chat = _chat_dicts(messages)
        if self.fmt.name == "llamaguard":
            return str(self.tokenizer.apply_chat_template(chat, chat_template=llama_guard_template(), tokenize=False,
                                                          add_generation_prompt=False))
        return str(self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=False))

    def encode(self, text: str) -> list[int]:
        # templates already carry the special tokens (BOS etc.)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Sequence[Message], max_tokens: int) -> tuple[str, int]:
        """The prompt up to and including the verdict prefix, and the index of the first message
        kept: the oldest messages are dropped until it fits in `max_tokens` (never the target turn,
        so a lone target turn may still exceed it: callers that must fit check the length)."""
        require_user_last(messages)
        start = 0
        while True:
            text = self.template(messages[start:]) + self.fmt.prefix
            if start >= len(messages) - 1 or len(self.encode(text)) <= max_tokens:
                return text, start
            # drop the oldest message; a context must still open with a user turn for some templates
            start += 1
            while start < len(messages) - 1 and messages[start].role != "user":
                start += 1


class HFGuard(FlatBatchMixin, BaseGuard):
    """A generative guard loaded with `transformers`.

    Args:
        model: hub name (e.g. "swordhealth/MindGuard-4B", "Qwen/Qwen3Guard-Gen-4B",
            "meta-llama/Llama-Guard-3-8B") or a local directory: a model, or a LoRA adapter
            (`adapter_config.json`, needs `peft`) such as `mindguard train-llm` writes.
        family: verdict format, "auto" (the training record of a `train-llm` directory, else from
            the name), "qwen3guard", "llamaguard" or "mindguard" (our policy prompt and format, for
            any instruction-tuned model and our fine-tunes).
        controversial: how Qwen3Guard's "Controversial" counts: "unsafe" (default: clinicians lean
            unsafe when in doubt) or "safe".
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", …
        dtype: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16", "float16".
        batch_size: contexts per forward pass.
        max_context_tokens: longest prompt; older messages are dropped to fit (default: the
            training length of a `train-llm` model, else 8192).
        policy_file: policy text replacing our taxonomy in the `mindguard` prompt (default: the
            one a `train-llm` model was trained with, else `taxonomy.render_policy()`).
    """

    def __init__(self, model: str, family: str = "auto", threshold: float = 0.5, controversial: str = UNSAFE_V,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 4, max_context_tokens: int | None = None,
                 revision: str | None = None, trust_remote_code: bool = False, name: str | None = None,
                 policy_file: str | None = None) -> None:
        import torch
        import transformers
        meta = read_sft_meta(model)
        fam = (meta.get("family") or family_of(model)) if family == "auto" else family
        if fam not in FORMATS:
            raise MindGuardError(f"unknown guard family {family!r}; choose auto, {', '.join(FORMATS)}")
        if controversial not in ("safe", "unsafe"):
            raise MindGuardError(f"controversial must be 'safe' or 'unsafe', got {controversial!r}")
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        elif dtype in dtypes:
            torch_dtype = dtypes[dtype]
        else:
            raise MindGuardError(f"unknown dtype {dtype!r}; use auto, {', '.join(dtypes)}")
        policy = meta.get("policy")
        if policy_file:
            try:
                policy = Path(policy_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise MindGuardError(f"cannot read the policy file {policy_file!r}: {exc.strerror}") from exc
        try:
            tokenizer: Any = transformers.AutoTokenizer.from_pretrained(model, revision=revision,
                                                                        trust_remote_code=trust_remote_code)
            if (Path(model) / "adapter_config.json").is_file():
                loaded: Any = _load_adapter(model, torch_dtype, trust_remote_code)
            else:
                loaded = transformers.AutoModelForCausalLM.from_pretrained(
                    model, revision=revision, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        except OSError as exc:
            raise MindGuardError(f"cannot load the model {model!r}: {str(exc).splitlines()[0]} "
                                 "(a hub name needs network access or the local cache; or pass a local directory)") from exc
        loaded.to(dev)
        loaded.eval()
        if max_context_tokens is None:
            max_context_tokens = int(meta.get("max_length") or 8192)
        self._setup(loaded, tokenizer, fam, threshold=threshold, controversial=controversial, batch_size=batch_size,
                    max_context_tokens=max_context_tokens, policy=policy, device=dev,
                    name=name or f"hf:{model.rstrip('/').split('/')[-1]}")

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, family: str = "mindguard", *, threshold: float = 0.5,
                   controversial: str = UNSAFE_V, batch_size: int = 4, max_context_tokens: int = 8192,
                   policy: str | None = None, name: str = "hf:in-memory") -> HFGuard:
        """A guard over a model already in memory (e.g. one being trained), left on its device and
        in whatever train/eval mode the caller keeps it in."""
        if family not in FORMATS:
            raise MindGuardError(f"unknown guard family {family!r}; choose {', '.join(FORMATS)}")
        self = cls.__new__(cls)
        device = str(next(model.parameters()).device)
        self._setup(model, tokenizer, family, threshold=threshold, controversial=controversial, batch_size=batch_size,
                    max_context_tokens=max_context_tokens, policy=policy, device=device, name=name)
        return self

    def _setup(self, model: Any, tokenizer: Any, family: str, *, threshold: float, controversial: str, batch_size: int,
               max_context_tokens: int, policy: str | None, device: str, name: str) -> None:
        import torch
        if controversial not in ("safe", "unsafe"):
            raise MindGuardError(f"controversial must be 'safe' or 'unsafe', got {controversial!r}")
        self.fmt: VerdictFormat = FORMATS[family]
        self.family = family
        self.threshold = float(threshold)
        self.controversial = controversial
        self.batch_size = max(1, int(batch_size))
        self.max_context_tokens = int(max_context_tokens)
        self.name = name
        self._torch: Any = torch
        self.tokenizer: Any = tokenizer
        self.model: Any = model
        self.device = device
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompter = PromptRenderer(tokenizer, self.fmt, policy)
        self._verdict_ids = self._candidate_ids()

    # -- prompt ------------------------------------------------------------------------------
    def render_prompt(self, messages: Sequence[Message]) -> str:
        """The exact text the model reads for the last turn of `messages`, up to and including the
        forced verdict prefix. Oldest messages are dropped if it would exceed max_context_tokens."""
        return self.prompter.render(messages, self.max_context_tokens)[0]

    def _template(self, messages: Sequence[Message]) -> str:
        return self.prompter.template(messages)

    def _encode(self, text: str) -> list[int]:
        return self.prompter.encode(text)

    def _candidate_ids(self) -> dict[str, list[int]]:
        words = dict(self.fmt.words)
        return {v: self._encode(w) for v, w in words.items()}

    # -- scoring -----------------------------------------------------------------------------
    def _forward_last(self, seqs: list[list[int]], keep: int) -> Any:
        """Log-softmax of the last `keep` positions of each sequence (left-padded batch)."""
        torch = self._torch
        width = max(len(s) for s in seqs)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=pos.to(self.device), logits_to_keep=keep)
        return torch.log_softmax(out.logits[:, -keep:, :].float(), dim=-1).cpu()

    def verdict_distributions(self, prompts: Sequence[str]) -> list[dict[str, float]]:
        """Per prompt (ending with the verdict prefix): probability of each verdict word."""
        cand = self._verdict_ids
        firsts = [ids[0] for ids in cand.values() if ids]
        out: list[dict[str, float]] = []
        encoded = [self._encode(p) for p in prompts]
        if len(firsts) == len(cand) and len(set(firsts)) == len(firsts):
            # one forward pass: the first tokens tell the verdict words apart. Batches of similar
            # lengths waste less compute on padding; results go back in the callers' order.
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
            found: dict[int, dict[str, float]] = {}
            for s in range(0, len(order), self.batch_size):
                chunk = order[s: s + self.batch_size]
                lp = self._forward_last([encoded[i] for i in chunk], 1)
                for i, row in zip(chunk, lp[:, -1, :]):
                    found[i] = {v: float(row[ids[0]].exp()) for v, ids in cand.items()}
            return [found[i] for i in range(len(encoded))]
        # verdict words share their first token: score each word's whole token sequence
        for p_ids in encoded:
            dist = {}
            for v, ids in cand.items():
                lp = self._forward_last([p_ids + ids], len(ids) + 1)[0]
                dist[v] = float(sum(lp[j, t] for j, t in enumerate(ids)).exp())
            out.append(dist)
        return out

    def name_categories(self, contexts: Sequence[Sequence[Message]], max_new_tokens: int = 16) -> list[str]:
        """Greedy category text after a forced unsafe verdict, for each context."""
        torch = self._torch
        texts = []
        for s in range(0, len(contexts), self.batch_size):
            chunk = contexts[s: s + self.batch_size]
            seqs = [self._encode(self.render_prompt(c)[: -len(self.fmt.prefix) or None] + self.fmt.category_prefix(UNSAFE_V))
                    for c in chunk]
            width = max(len(x) for x in seqs)
            pad = int(self.tokenizer.pad_token_id)
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in seqs], dtype=torch.long)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], dtype=torch.long)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for row in gen[:, width:]:
                texts.append(str(self.tokenizer.decode(row, skip_special_tokens=True)).split("\n")[0].strip())
        return texts

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        for c in contexts:
            require_user_last(c)
        prompts = [self.render_prompt(c) for c in contexts]
        dists = self.verdict_distributions(prompts)
        p_unsafe = [verdict_p_unsafe(d, self.controversial) for d in dists]
        flagged = [i for i, p in enumerate(p_unsafe) if p >= self.threshold]
        named = dict(zip(flagged, self.name_categories([contexts[i] for i in flagged]))) if flagged else {}
        results = []
        for i, (ctx, dist, p) in enumerate(zip(contexts, dists, p_unsafe)):
            cats = named.get(i)
            labels = labels_of_categories(cats.split(","), self.fmt) if cats else []
            extra: dict[str, Any] = {"verdict": {k: round(v, 6) for k, v in dist.items()}}
            if cats is not None:
                extra["categories"] = cats
            results.append(make_assessment(unsafe_split(p, labels), self.threshold, len(ctx) - 1, self.name, (), extra))
        return results


def _load_adapter(path: str, dtype: Any, trust_remote_code: bool) -> Any:
    """A LoRA adapter directory over its base model, merged for plain inference speed. The base is
    the one named in the adapter's config (a hub name or the path it was trained from)."""
    peft: Any = require("peft", "train-llm")
    import transformers

    cfg = peft.PeftConfig.from_pretrained(path)
    try:
        base = transformers.AutoModelForCausalLM.from_pretrained(cfg.base_model_name_or_path, dtype=dtype,
                                                                 trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise MindGuardError(f"cannot load the base model {cfg.base_model_name_or_path!r} of the adapter {path!r}: "
                             f"{str(exc).splitlines()[0]}") from exc
    return peft.PeftModel.from_pretrained(base, path).merge_and_unload()
