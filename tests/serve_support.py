"""Helpers for the serve tests: the real app under uvicorn on 127.0.0.1 (in a thread, or as a
`mindguard serve` subprocess), a loopback webhook receiver, keys, and a tiny encoder model dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from mindguard.guards import BaseGuard
from mindguard.serve.auth import create_key
from mindguard.serve.settings import load_settings
from mindguard.serve.store import Store

CANARY = "zebra-canary-7731"  # a phrase that must never reach logs, metrics or webhook payloads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_keys(db_url: str, specs: Mapping[str, tuple[str, list[str]]]) -> dict[str, str]:
    """{name: (tenant, scopes)} -> {name: key}, stored in the database at `db_url`."""
    store = Store(db_url)
    try:
        return {name: create_key(store, tenant, scopes, name)[0] for name, (tenant, scopes) in specs.items()}
    finally:
        store.close()


class ThreadServer:
    """`create_app(settings, guard)` served by uvicorn in a background thread on a free port."""

    def __init__(self, overrides: Mapping[str, Any], guard: BaseGuard | None = None) -> None:
        import uvicorn

        from mindguard.serve import create_app

        self.settings = load_settings(overrides=dict(overrides), environ={})
        self.app = create_app(self.settings, guard=guard)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def service(self) -> Any:
        return self.app.state.service

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class WebhookReceiver:
    """A loopback HTTP server that records alert deliveries and answers with `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.deliveries: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                return

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status = receiver.status
                    receiver.deliveries.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                                "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/alerts"

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [d for d in self.deliveries if 200 <= d["status"] < 300]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def subprocess_server(config: Path, port: int, log: Path, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m mindguard serve --config CONFIG --port PORT` until the block ends (then SIGKILL if alive)."""
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mindguard", "serve", "--config", str(config), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=full_env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready in time")


def write_toml(path: Path, settings: Mapping[str, Any]) -> Path:
    """A minimal TOML writer for flat settings plus `webhooks` (a list of tables)."""
    lines = []
    tables = []
    for k, v in settings.items():
        if k == "webhooks":
            for w in v:
                tables.append("[[webhooks]]\n" + "".join(f"{wk} = {json.dumps(wv)}\n" for wk, wv in w.items()))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n\n" + "\n".join(tables))
    return path


def build_tiny_encoder(root: Path) -> Path:
    """An untrained encoder-guard model directory on a 2-layer, 32-wide BERT (MiniLM's tokenizer):
    the full inference path of the embedded guard at a fraction of the cost."""
    import torch
    from transformers import BertConfig, BertModel

    from mindguard.guards.encoder import EncoderConfig, EncoderModel, resolve_base

    torch.manual_seed(0)
    base = root / "base"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(base)
    src = Path(resolve_base("minilm"))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, base / f)
    return EncoderModel(EncoderConfig(base=str(base), finetune_layers=1, state_size=16)).save(root / "model")


def conversation(*turns: str) -> list[dict[str, str]]:
    """Alternating user/assistant messages, starting with the user."""
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(turns)]
