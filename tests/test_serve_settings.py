"""Settings from file and environment, their errors, the `mindguard serve` command (help, --check,
keys add/list/revoke, prune), key hashing and the store's retention."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys

import pytest

from mindguard.errors import MindGuardError
from mindguard.serve.auth import KeyVerifier, RateLimiter, create_key, new_api_key, verify_secret
from mindguard.serve.settings import load_settings
from mindguard.serve.store import NewEvent, Store, utcnow


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mindguard", "serve", *args], capture_output=True, text=True, check=check)


def test_precedence_defaults_file_env_overrides(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[serve]\nguard = "keyword"\nport = 9001\nfail_mode = "open"\n'
                   '[[serve.webhooks]]\nurl = "http://127.0.0.1:9/hook"\ntenant = "a"\n'
                   '[serve.intervention_by_label]\nunsafe_harm_to_others = "crisis_response"\n')
    s = load_settings(cfg, environ={})
    assert (s.guard, s.port, s.fail_mode, s.max_messages) == ("keyword", 9001, "open", 200)
    assert s.webhooks[0].tenant == "a" and s.action_for("unsafe_harm_to_others") == "crisis_response"
    assert s.action_for("unsafe_self_harm_risk") == "inject" and s.action_for(None) == "inject"
    env = {"MINDGUARD_SERVE_PORT": "9002", "MINDGUARD_SERVE_STORE_TEXT": "true",
           "MINDGUARD_SERVE_WEBHOOKS": '[{"url": "https://alerts.example/x"}]'}
    s = load_settings(cfg, environ=env)
    assert s.port == 9002 and s.store_text is True and s.webhooks[0].url == "https://alerts.example/x"
    s = load_settings(cfg, overrides={"port": 9003, "guard": None}, environ=env)
    assert s.port == 9003 and s.guard == "keyword"  # None means "flag not given"
    j = tmp_path / "serve.json"
    j.write_text(json.dumps({"guard": "keyword", "retention_days": 7}))
    assert load_settings(j, environ={}).retention_days == 7


@pytest.mark.parametrize("content, env, needle", [
    ("gaurd = 'keyword'\n", {}, "gaurd: unknown setting"),
    ("port = 'eighty'\n", {}, "port:"),
    ("fail_mode = 'maybe'\n", {}, "fail_mode:"),
    ("[intervention_by_label]\nsafe = 'inject'\n", {}, "unknown label 'safe'"),
    ("[[webhooks]]\nurl = 'ftp://x'\n", {}, "http://"),
    ("port = [\n", {}, "not valid TOML"),
    ("", {"MINDGUARD_SERVE_RATE_LIMIT_BURST": "0"}, "MINDGUARD_SERVE_RATE_LIMIT_BURST: Input should be greater"),
    ("", {"MINDGUARD_SERVE_WEBHOOKS": '[{"url": "http://x", "tenat": "a"}]'}, r"MINDGUARD_SERVE_WEBHOOKS\.0\.tenat: unknown key; known: url, tenant, secret_env"),
    ("", {"MINDGUARD_SERVE_WEBHOOKS": "not json"}, "must be JSON"),
])
def test_bad_settings_name_the_key(tmp_path, content, env, needle):
    cfg = tmp_path / "serve.toml"
    cfg.write_text(content)
    with pytest.raises(MindGuardError, match=needle):
        load_settings(cfg, environ=env)


def test_missing_config_file(tmp_path):
    with pytest.raises(MindGuardError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_serve_help_documents_every_setting():
    out = run_cli("--help").stdout
    from mindguard.serve.settings import ServeSettings

    for name in ServeSettings.model_fields:
        assert f"MINDGUARD_SERVE_{name.upper()}" in out
    assert "keys" in out and "/v1/chat/completions" in out


def test_keys_cli_and_check(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    made = json.loads(run_cli("keys", "add", "--tenant", "clinic-a", "--scope", "events:read", "--scope", "assess",
                              "--name", "reviewer desk", "--json", "--database-url", url).stdout)
    assert made["key"].startswith("mgk_") and made["scopes"] == ["assess", "events:read"]
    listed = run_cli("keys", "list", "--database-url", url).stdout
    assert made["key_id"] in listed and "clinic-a" in listed and made["key"] not in listed
    with sqlite3.connect(tmp_path / "cli.db") as db:
        stored = db.execute("SELECT * FROM mg_api_keys").fetchall()
    assert made["key"].split("_", 2)[2] not in str(stored)  # only a salted hash is stored
    run_cli("keys", "revoke", made["key_id"], "--database-url", url)
    assert "revoked" in run_cli("keys", "list", "--database-url", url).stdout
    again = run_cli("keys", "revoke", made["key_id"], "--database-url", url, check=False)
    assert again.returncode == 2 and "no active key" in again.stderr
    bad = run_cli("keys", "add", "--tenant", "bad tenant!", "--database-url", url, check=False)
    assert bad.returncode == 2 and "tenant" in bad.stderr
    ok = run_cli("--check", "--guard", "keyword", "--database-url", url)
    assert "guard 'keyword' loaded" in ok.stderr
    nope = run_cli("--check", "--guard", "nonexistent", "--database-url", url, check=False)
    assert nope.returncode == 2 and "cannot load the guard 'nonexistent': unknown guard" in nope.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prot = 1\n")
    assert f"{cfg}: prot: unknown setting" in run_cli("--check", "--config", str(cfg), check=False).stderr
    assert "command line: port:" in run_cli("--check", "--port", "70000", check=False).stderr


def test_key_hashing_and_verification(tmp_path):
    key, row = new_api_key("t", ["assess"])
    assert verify_secret(row, key)
    assert not verify_secret(row, key[:-1] + ("A" if key[-1] != "A" else "B"))
    key2, row2 = new_api_key("t", ["assess"])
    assert row.salt != row2.salt and row.digest != row2.digest
    with pytest.raises(MindGuardError, match="unknown scope"):
        new_api_key("t", ["admin"])
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    k, kid = create_key(store, "tenant-x", ["assess", "events:read"])
    p = KeyVerifier(store, cache_s=0).verify(k)
    assert p is not None and p.tenant == "tenant-x" and p.scopes == {"assess", "events:read"}
    assert KeyVerifier(store).verify(k.replace(kid, "0" * 16)) is None
    store.close()


def test_rate_limiter_refuses_beyond_the_burst():
    rl = RateLimiter(per_minute=1, burst=2)
    assert [rl.check("k") for _ in range(2)] == [0.0, 0.0]
    assert rl.check("k") > 0 and rl.check("other") == 0.0
    assert RateLimiter(per_minute=0, burst=1).check("k") == 0.0  # 0 = unlimited


def _event(fp: str) -> NewEvent:
    return NewEvent(tenant="t", fingerprint=fp, endpoint="assess", conversation_id=None, request_id="r", message_index=0,
                    turn=0, status="ok", label="unsafe_self_harm_risk", p_unsafe=0.9, probabilities=None, threshold=0.5,
                    guard="keyword")


def test_retention_prunes_old_events(tmp_path):
    db = tmp_path / "ret.db"
    url = f"sqlite:///{db}"
    store = Store(url)
    old, new = store.record_events([_event("old"), _event("new")], lambda tenant: [])
    assert store.record_events([_event("old")], lambda tenant: []) == [old]  # same fingerprint, same event
    long_ago = utcnow() - dt.timedelta(days=40)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE mg_risk_events SET created_at = ? WHERE id = ?", (long_ago.strftime("%Y-%m-%d %H:%M:%S.%f"), old))
    assert store.prune(utcnow() - dt.timedelta(days=30)) == (1, 0)
    assert store.get_event("t", old) is None and store.get_event("t", new) is not None
    store.close()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'database_url = "{url}"\nretention_days = 0\n')
    assert "kept forever" in run_cli("prune", "--config", str(cfg)).stderr
    cfg.write_text(f'database_url = "{url}"\nretention_days = 1\n')
    assert "deleted 0 risk events" in run_cli("prune", "--config", str(cfg)).stderr
