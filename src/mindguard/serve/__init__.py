"""The guarded chat service (`mindguard serve`): an HTTP API and OpenAI-compatible proxy in front
of any registered guard, with a durable risk-event store, webhook alerts, tenant-scoped API keys,
limits and metrics. Needs the `serve` extra (`pip install 'mindguard[serve]'`).

Example:
    >>> from mindguard.serve import create_app, load_settings  # doctest: +SKIP
    >>> app = create_app(load_settings("serve.toml"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .settings import ServeSettings, WebhookTarget, load_settings

__all__ = ["ServeSettings", "WebhookTarget", "create_app", "load_settings"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See `mindguard.serve.app.create_app` (imported lazily: FastAPI loads only when serving)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
