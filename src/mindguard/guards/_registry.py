"""Guard registry: `load_guard("name:key=value,key=value")` builds any registered backend.

Backends are registered by import path so that listing or choosing a light guard never imports a
heavy one (the encoder needs torch; the LLM guards need an HTTP client or transformers).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..errors import MindGuardError
from ._base import BaseGuard

_REGISTRY: dict[str, str] = {
    "keyword": "mindguard.guards.keyword:KeywordGuard",
    "encoder": "mindguard.guards.encoder:EncoderGuard",
    "hf": "mindguard.guards.hf:HFGuard",
    "openai_compat": "mindguard.guards.openai_compat:OpenAICompatGuard",
    "llm_judge": "mindguard.guards.llm_judge:LLMJudgeGuard",
}
DEFAULT_GUARD = "encoder"


def register_guard(name: str, target: str) -> None:
    """Register `target` ("module:callable") under `name`."""
    _REGISTRY[name] = target


def guard_names() -> list[str]:
    return sorted(_REGISTRY)


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_guard_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split "name:key=value,key=value" into the name and an options dict."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    opts: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            # a bare value is the backend's first option (e.g. a model path)
            key, value = "_", part
        opts[key.strip()] = _coerce(value.strip())
    return name, opts


def load_guard(spec: str = DEFAULT_GUARD) -> BaseGuard:
    """Build a guard from a spec; errors name the unknown guard or option and list the valid ones."""
    name, opts = parse_guard_spec(spec)
    if name not in _REGISTRY:
        raise MindGuardError(f"unknown guard {name!r}; available: {', '.join(guard_names())}")
    module, _, attr = _REGISTRY[name].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    params = [p for p in inspect.signature(factory).parameters.values() if p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD]
    allowed = [p.name for p in params]
    if "_" in opts:
        if not allowed:
            raise MindGuardError(f"guard {name!r} takes no options")
        opts[allowed[0]] = opts.pop("_")
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise MindGuardError(f"guard {name!r} has no option {unknown[0]!r}; options: {', '.join(allowed) or 'none'}")
    guard: BaseGuard = factory(**opts)
    return guard
