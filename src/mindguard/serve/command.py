"""`mindguard serve`: run the guarded chat service, and manage its API keys and retention.

    mindguard serve --config serve.toml              # run (settings: file < env < flags)
    mindguard serve keys add --tenant clinic-a       # prints a new key once
    mindguard serve keys list | keys revoke KEY_ID
    mindguard serve prune                            # apply the retention setting now
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..errors import MindGuardError, require

_FLAGS: tuple[tuple[str, str, Any], ...] = (
    # (flag, setting, type) — the settings most often given on the command line; every setting
    # can be given in the config file or as MINDGUARD_SERVE_<NAME>
    ("--host", "host", str),
    ("--port", "port", int),
    ("--guard", "guard", str),
    ("--database-url", "database_url", str),
    ("--upstream-url", "upstream_url", str),
    ("--upstream-model", "upstream_model", str),
    ("--fail-mode", "fail_mode", str),
    ("--guard-timeout", "guard_timeout_s", float),
    ("--intervention", "intervention", str),
    ("--log-level", "log_level", str),
)


def _epilog() -> str:
    try:
        from .settings import ENV_PREFIX, describe_settings
    except ImportError:  # pragma: no cover - without the serve extra
        return "Install the server with: pip install 'mindguard[serve]' (this help then lists every setting)."
    return (
        "Settings come from (later wins): defaults, --config FILE (TOML or JSON; a [serve] table or top-level keys), "
        f"environment variables {ENV_PREFIX}<NAME> (lists and tables as JSON), then the flags above.\n\n"
        "Endpoints: POST /v1/assess, POST /v1/sessions/{id}/turns, GET|DELETE /v1/sessions/{id}, "
        "POST /v1/chat/completions (OpenAI-compatible, guarded), GET /v1/events, GET /v1/events/{id}, "
        "/healthz, /readyz, /metrics, /docs.\n\n"
        "Settings:\n" + describe_settings()
    )


def _field_help(name: str) -> str:
    try:
        from .settings import ServeSettings
    except ImportError:  # pragma: no cover - without the serve extra
        return f"setting {name}"
    return f"{ServeSettings.model_fields[name].description} (setting {name})".replace("%", "%%")


def add_command(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the guarded chat service (HTTP API + OpenAI-compatible proxy)",
                       description="Run the guarded chat service: an HTTP API and an OpenAI-compatible proxy in front of a "
                                   "guard, with a durable risk-event store and webhook alerts.",
                       epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="settings file (.toml or .json)")
    for flag, name, typ in _FLAGS:
        s.add_argument(flag, dest=name, type=typ, default=None, help=_field_help(name))
    s.add_argument("--store-text", dest="store_text", action="store_const", const=True, default=None,
                   help="also store the text of flagged turns (setting store_text)")
    s.add_argument("--check", action="store_true", help="validate the settings, load the guard and open the store, then exit")
    s.set_defaults(func=run)
    ssub = s.add_subparsers(dest="serve_command", metavar="ACTION")

    keys = ssub.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    ka = ksub.add_parser("add", help="create a key for a tenant (printed once; only its hash is stored)")
    ka.add_argument("--tenant", required=True, help="tenant the key belongs to")
    ka.add_argument("--scope", action="append", choices=("assess", "events:read"),
                    help="scope; repeatable (default: assess). events:read lets reviewers read the tenant's events")
    ka.add_argument("--name", default="", help="a note saying who holds the key")
    ka.add_argument("--json", action="store_true", help="print key, id, tenant and scopes as JSON")
    kl = ksub.add_parser("list", help="list keys (ids, tenants, scopes; never secrets)")
    kl.add_argument("--tenant", help="only this tenant")
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    pr = ssub.add_parser("prune", help="delete risk events older than the retention setting now")
    for p in (ka, kl, kr, pr):
        p.add_argument("--config", dest="sub_config", help="settings file (for database_url and retention_days)")
        p.add_argument("--database-url", dest="sub_database_url", help="database URL (overrides the settings)")
        p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Any:
    from .settings import load_settings

    if getattr(args, "serve_command", None):
        return load_settings(args.sub_config, {"database_url": args.sub_database_url})
    overrides = {name: getattr(args, name) for _, name, _ in _FLAGS}
    overrides["store_text"] = args.store_text
    return load_settings(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    for mod in ("fastapi", "uvicorn", "sqlalchemy", "pydantic", "prometheus_client"):
        require(mod, "serve")
    settings = _settings(args)
    if args.serve_command == "keys":
        return _keys(args, settings)
    if args.serve_command == "prune":
        return _prune(settings)
    return _serve(args, settings)


def _keys(args: argparse.Namespace, settings: Any) -> int:
    from .auth import create_key
    from .store import Store

    store = Store(settings.database_url)
    try:
        if args.keys_command == "add":
            scopes = args.scope or ["assess"]
            key, key_id = create_key(store, args.tenant, scopes, args.name)
            if args.json:
                print(json.dumps({"key": key, "key_id": key_id, "tenant": args.tenant, "scopes": sorted(set(scopes))}))
            else:
                print(key)
                print(f"created key {key_id} for tenant {args.tenant!r} with scopes {', '.join(sorted(set(scopes)))}; "
                      "store it now: it cannot be shown again", file=sys.stderr)
        elif args.keys_command == "list":
            for row in store.list_keys(args.tenant):
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
                print(f"{row.key_id}  tenant={row.tenant}  scopes={row.scopes}  {state}  created {row.created_at:%Y-%m-%d}  {row.name}")
        else:
            if not store.revoke_key(args.key_id):
                raise MindGuardError(f"no active key with id {args.key_id!r}")
            print(f"revoked {args.key_id}", file=sys.stderr)
    finally:
        store.close()
    return 0


def _prune(settings: Any) -> int:
    import datetime as dt

    from .store import Store, utcnow

    if settings.retention_days <= 0:
        print("retention_days is 0: events are kept forever; nothing to prune", file=sys.stderr)
        return 0
    store = Store(settings.database_url)
    try:
        n_ev, n_ob = store.prune(utcnow() - dt.timedelta(days=settings.retention_days))
    finally:
        store.close()
    print(f"deleted {n_ev} risk events and {n_ob} finished webhook deliveries older than {settings.retention_days:g} days",
          file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace, settings: Any) -> int:
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)  # loads the guard and opens the store: errors surface before listening
    if args.check:
        print(f"settings valid; guard {app.state.service.guard.name!r} loaded; store reachable", file=sys.stderr)
        app.state.service.runner.close()
        app.state.service.store.close()
        return 0
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                timeout_graceful_shutdown=10, server_header=False)
    return 0
