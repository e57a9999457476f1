"""Settings of the guarded chat service, read from defaults, a TOML/JSON file, the environment
and command-line flags (in that order, later wins).

Every setting has a field here with its default and a one-line description; `mindguard serve
--help` and docs/serve.md are generated from / kept in step with this table. Environment
variables are the field name upper-cased with the prefix `MINDGUARD_SERVE_` (for example
`MINDGUARD_SERVE_DATABASE_URL`); lists and tables (`webhooks`, `intervention_by_label`) are given
there as JSON. Unknown keys in a file or a bad value anywhere raise a `MindGuardError` naming the
key, so a typo never silently falls back to a default.

Example:
    >>> s = load_settings(overrides={"guard": "keyword", "port": 9000})
    >>> s.guard, s.port, s.fail_mode
    ('keyword', 9000, 'closed')
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import MindGuardError
from ..taxonomy import UNSAFE_LABELS

ENV_PREFIX = "MINDGUARD_SERVE_"

Action = Literal["inject", "crisis_response", "none"]

DEFAULT_INTERVENTION_MESSAGE = (
    "MindGuard safety notice: the user's last message was assessed as a possible current risk "
    "({label}). Follow the crisis protocol now: respond with warmth and without judgement, ask directly "
    "about safety and immediate danger, do not give any information that could be used for self-harm "
    "or to harm others, encourage contacting local emergency services or a crisis line, and offer to "
    "stay with the person while they reach out."
)
DEFAULT_CRISIS_RESPONSE = (
    "I'm really glad you told me, and I'm concerned about your safety right now. You deserve support "
    "from a person immediately: if you are in danger or might act on these thoughts, please call your "
    "local emergency number, or contact a crisis line in your country (for example 988 in the US, or "
    "116 123 for Samaritans in the UK and Ireland). If you can, reach out to someone you trust and stay "
    "with them. I'm here to keep talking with you while you do."
)


class WebhookTarget(BaseModel):
    """Where flag alerts are POSTed. `tenant` limits the target to one tenant's events (None: all);
    `secret_env` names an environment variable whose value signs each body (HMAC-SHA256)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    tenant: str | None = None
    secret_env: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class ServeSettings(BaseModel):
    """All settings of `mindguard serve` (see the module docstring for how they are read)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- network -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 to expose it)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    docs: bool = Field(True, description="serve the OpenAPI docs at /docs and /openapi.json")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")
    access_log: bool = Field(True, description="log one line per request (method, path, status; never bodies)")

    # -- guard ---------------------------------------------------------------------------------
    guard: str = Field("encoder", description="guard spec NAME[:key=value,...] (see `mindguard guards`)")
    guard_timeout_s: float = Field(5.0, gt=0, description="deadline of one assessment, queueing included")
    fail_mode: Literal["closed", "open"] = Field(
        "closed", description="when the guard errors or misses its deadline: 'closed' treats the turn as flagged, "
        "'open' as not flagged (both are reported and counted)")
    guard_max_batch: int = Field(16, ge=1, le=1024, description="most concurrent requests the guard assesses in one batch")

    # -- risk-event store ----------------------------------------------------------------------
    database_url: str = Field("sqlite:///mindguard-serve.db",
                              description="SQLAlchemy URL of the risk-event store (SQLite file or postgresql+psycopg://...)")
    store_text: bool = Field(False, description="also store the text of flagged turns (off: only labels, scores, indices)")
    retention_days: float = Field(90.0, ge=0, description="delete risk events older than this (0 keeps them forever)")
    key_cache_s: float = Field(10.0, ge=0, description="how long a verified API key is cached (revocation takes effect after it)")

    # -- request limits ------------------------------------------------------------------------
    max_body_bytes: int = Field(262144, ge=1024, description="largest request body accepted (413 above)")
    max_messages: int = Field(200, ge=1, description="most messages in one request (422 above)")
    max_message_chars: int = Field(16000, ge=1, description="longest message content in characters (422 above)")
    max_session_messages: int = Field(2000, ge=1, description="most messages one streaming session may hold")
    session_ttl_s: float = Field(3600.0, gt=0, description="a streaming session idle this long is forgotten")
    max_sessions: int = Field(10000, ge=1, description="most live sessions; the longest idle is dropped beyond it")
    rate_limit_per_minute: float = Field(600.0, ge=0, description="requests per minute per API key (0: unlimited)")
    rate_limit_burst: int = Field(60, ge=1, description="requests a key may make at once before the per-minute rate applies")

    # -- proxy ---------------------------------------------------------------------------------
    upstream_url: str | None = Field(None, description="OpenAI-compatible base URL of the clinician LLM, e.g. http://vllm:8000/v1")
    upstream_api_key_env: str | None = Field(None, description="environment variable holding the upstream API key")
    upstream_model: str | None = Field(None, description="model name sent upstream (default: the client's)")
    upstream_timeout_s: float = Field(120.0, gt=0, description="timeout of one upstream call")
    intervention: Action = Field(
        "inject", description="on a flagged turn: 'inject' a safety message for the LLM, answer with the "
        "'crisis_response' without calling upstream, or 'none'")
    intervention_by_label: dict[str, Action] = Field(default_factory=dict, description="per-label override of `intervention` (JSON/TOML table)")
    intervention_role: Literal["system", "developer"] = Field("system", description="role of the injected safety message")
    intervention_position: Literal["append", "prepend"] = Field("append", description="inject after the last message or before the first")
    intervention_message: str = Field(DEFAULT_INTERVENTION_MESSAGE, description="injected text; {label} is replaced by the label")
    crisis_response: str = Field(DEFAULT_CRISIS_RESPONSE, description="the answer sent instead of the LLM's when intervention is crisis_response")

    # -- webhooks ------------------------------------------------------------------------------
    webhooks: list[WebhookTarget] = Field(default_factory=list, description="alert targets: [{url, tenant?, secret_env?}] (JSON/TOML)")
    webhook_max_attempts: int = Field(12, ge=1, description="delivery attempts before an alert is marked failed")
    webhook_backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles per attempt")
    webhook_backoff_max_s: float = Field(600.0, gt=0, description="longest retry delay")
    webhook_timeout_s: float = Field(5.0, gt=0, description="timeout of one delivery")
    webhook_poll_s: float = Field(1.0, gt=0, description="how often the outbox is checked for due deliveries")

    @field_validator("intervention_by_label")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if k not in UNSAFE_LABELS:
                raise ValueError(f"unknown label {k!r}; allowed: {', '.join(UNSAFE_LABELS)}")
        return v

    def action_for(self, label: str | None) -> str:
        """The intervention for a flagged turn with `label` (None: the guard failed closed)."""
        if label is not None and label in self.intervention_by_label:
            return self.intervention_by_label[label]
        return self.intervention


def _format_error(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One line naming where the bad value came from (file, variable or flag) and what is wrong."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(root)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        known = ServeSettings.model_fields if len(err["loc"]) == 1 else WebhookTarget.model_fields
        msg = f"unknown {'setting' if len(err['loc']) == 1 else 'key'}; known: {', '.join(known)}"
    top = str(err["loc"][0]) if err["loc"] else ""
    source = sources.get(top, "settings")
    if source == "env":
        return f"{ENV_PREFIX}{top.upper()}{loc[len(top):]}: {msg}"
    return f"{source}: {loc}: {msg}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML (.toml) or JSON (.json) file of settings; a `[serve]` table is used if present."""
    p = Path(path)
    if not p.is_file():
        raise MindGuardError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ImportError:  # pragma: no cover - Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
    except (ValueError, json.JSONDecodeError) as exc:
        raise MindGuardError(f"config file {p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(data, dict):
        raise MindGuardError(f"config file {p} must hold a table of settings")
    if isinstance(data.get("serve"), dict):
        data = data["serve"]
    return data


def _env_value(name: str, raw: str) -> Any:
    field = ServeSettings.model_fields[name]
    ann = str(field.annotation)
    if "list" in ann or "dict" in ann:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise MindGuardError(f"{ENV_PREFIX}{name.upper()} must be JSON") from None
    if raw == "" and "None" in ann:
        return None
    return raw  # pydantic converts strings to numbers and booleans


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings given as MINDGUARD_SERVE_<NAME> environment variables."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name in ServeSettings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            out[name] = _env_value(name, env[key])
    return out


def load_settings(config: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Defaults < config file < environment < `overrides` (CLI flags; None values are ignored)."""
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config:
        from_file = read_config_file(config)
        data.update(from_file)
        sources.update(dict.fromkeys(from_file, str(config)))
    env = settings_from_env(environ)
    data.update(env)
    sources.update(dict.fromkeys(env, "env"))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(flags)
    sources.update(dict.fromkeys(flags, "command line"))
    try:
        return ServeSettings(**data)
    except ValidationError as exc:
        raise MindGuardError(_format_error(exc, sources)) from None


def describe_settings() -> str:
    """One line per setting (name, default, env variable, description), for --help and the docs."""
    lines = []
    for name, f in ServeSettings.model_fields.items():
        default = f.default if f.default_factory is None else f.default_factory()  # type: ignore[call-arg]
        shown = json.dumps(default) if not isinstance(default, str) else default
        if isinstance(default, str) and len(default) > 40:
            shown = default[:37] + "..."
        lines.append(f"  {name} (${ENV_PREFIX}{name.upper()}, default {shown})\n      {f.description}")
    return "\n".join(lines)
