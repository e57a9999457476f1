"""Load test of `mindguard serve`: requests/s and latency percentiles of POST /v1/assess.

Starts the real server as a subprocess on 127.0.0.1 (a fresh SQLite store in a temporary folder),
then runs `--concurrency` clients that each send whole conversations (`--messages` long, every
one unique so no cache helps, about one in ten ending in a risky turn so the store's durable write
is on the path) with `last_only`, until `--requests` are done or `--max-seconds` pass. Bounded and
loopback-only. Prints throughput, p50/p90/p99 latency and the guard's mean batch size.

    python benchmarks/load_serve.py                              # encoder guard (the shipped model)
    python benchmarks/load_serve.py --guard keyword              # any guard spec
    python benchmarks/load_serve.py --untrained-encoder          # MiniLM-sized encoder, untrained head:
                                                                 # same compute, for when no model is shipped
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

USER = ["work has been so stressful lately", "i didn't sleep again last night", "my sister called and we argued",
        "i keep thinking about what my therapist said", "honestly i'm just tired of everything", "the kids were a handful today",
        "i went for a walk and it helped a bit", "i don't know why i feel so flat", "my boss keeps piling things on me",
        "i've been skipping meals again"]
ASSISTANT = ["That sounds like a lot. What's been weighing on you most?", "Thank you for sharing that. How did it feel?",
             "I'm here with you. Can you tell me more?", "That makes sense given everything. What helps on days like this?"]
RISKY = ["some nights i wish i just wouldn't wake up", "i've been saving up my pills", "he'll get what's coming to him friday"]


def conversation(n_messages: int, rng: random.Random, k: int) -> list[dict[str, str]]:
    msgs = []
    for i in range(n_messages):
        if i % 2 == 0:
            text = rng.choice(USER)
            if i == n_messages - 1 and rng.random() < 0.1:
                text = rng.choice(RISKY)
            msgs.append({"role": "user", "content": f"{text} ({k}.{i})"})  # unique text: no cache hits
        else:
            msgs.append({"role": "assistant", "content": rng.choice(ASSISTANT)})
    return msgs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def request_bodies(args: argparse.Namespace) -> list[dict[str, object]]:
    """`unique`: every request a new conversation (nothing cached: the worst case). `growing`: each
    of `concurrency` chats grows by a turn per request and is re-sent whole, as a stateless chat
    client does (earlier turns hit the guard's cache: the common case)."""
    rng = random.Random(args.seed)
    n = args.requests + args.warmup
    if args.workload == "unique":
        return [{"messages": conversation(args.messages, rng, k), "last_only": True} for k in range(n)]
    chats = [conversation(args.messages, rng, k) for k in range(n)]
    bodies = []
    per_chat = (args.messages + 1) // 2
    for k in range(n):
        chat = chats[(k // (args.concurrency * per_chat)) * args.concurrency + k % args.concurrency]
        turn = (k // args.concurrency) % per_chat
        bodies.append({"messages": chat[: 2 * turn + 1], "last_only": True})
    return bodies


async def run_load(url: str, key: str, args: argparse.Namespace) -> tuple[list[float], int, float]:
    bodies = request_bodies(args)
    latencies: list[float] = []
    errors = 0
    next_i = 0
    deadline = 0.0

    async def worker(client: httpx.AsyncClient, measured: bool, limit: int) -> None:
        nonlocal next_i, errors
        while next_i < limit and time.perf_counter() < deadline:
            body = bodies[next_i]
            next_i += 1
            t0 = time.perf_counter()
            r = await client.post("/v1/assess", json=body)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                errors += 1
            elif measured:
                latencies.append(dt)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + args.max_seconds
        await asyncio.gather(*(worker(client, False, args.warmup) for _ in range(args.concurrency)))
        t0 = time.perf_counter()
        deadline = t0 + args.max_seconds
        await asyncio.gather(*(worker(client, True, args.warmup + args.requests) for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall


def flag_one_in_ten(model: Path, args: argparse.Namespace) -> float:
    """An operating point at which the untrained stand-in flags about one turn in ten (as a trained
    model would on this workload), so evidence and store writes cost what they would in use."""
    from mindguard.conversation import Conversation
    from mindguard.guards.encoder import EncoderGuard

    g = EncoderGuard(model=str(model), explain=False)
    rng = random.Random(args.seed + 1)
    convs = [Conversation.from_dicts(str(k), conversation(args.messages, rng, k)) for k in range(60)]
    # the turns the workload assesses: the last of each conversation, or every turn as chats grow
    p = sorted(a.p_unsafe for c in convs for a in (g.assess_conversation(c)[-1:] if args.workload == "unique"
                                                    else g.assess_conversation(c)))
    return min(0.999999, p[int(0.9 * len(p))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guard", default=None, help="guard spec (default: encoder if the shipped model exists, else keyword)")
    ap.add_argument("--untrained-encoder", action="store_true", help="build a MiniLM-sized encoder model with an untrained head")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400, help="measured requests (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--messages", type=int, default=9, help="messages per conversation (ends with a user turn when odd)")
    ap.add_argument("--workload", choices=("unique", "growing"), default="unique",
                    help="unique conversations (worst case) or growing chats re-sent whole (see request_bodies)")
    ap.add_argument("--max-seconds", type=float, default=180.0, help="stop measuring after this long")
    ap.add_argument("--guard-max-batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.concurrency < 1 or args.requests < 1 or args.messages < 1:
        ap.error("--concurrency, --requests and --messages must be positive")

    from mindguard.serve.auth import create_key
    from mindguard.serve.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        guard = args.guard
        note = ""
        if args.untrained_encoder:
            from mindguard.guards.encoder import EncoderConfig, EncoderModel

            model = EncoderModel(EncoderConfig()).save(Path(tmp) / "model")
            threshold = flag_one_in_ten(model, args)
            guard = f"encoder:model={model},operating_point={threshold:.6f}"
            note = " (MiniLM-L6 encoder, untrained head set to flag ~10% of turns: the shipped model's inference cost)"
        elif guard is None:
            from mindguard.guards.encoder import DEFAULT_MODEL_DIR

            guard = "encoder" if (DEFAULT_MODEL_DIR / "config.json").exists() or os.environ.get("MINDGUARD_MODEL") else "keyword"
            if guard == "keyword":
                note = " (no shipped encoder model found; use --untrained-encoder for encoder-sized figures)"
        db = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = Store(db)
        key, _ = create_key(store, "bench", ["assess"])
        store.close()
        port = free_port()
        env = {**os.environ, "MINDGUARD_SERVE_GUARD": guard, "MINDGUARD_SERVE_DATABASE_URL": db,
               "MINDGUARD_SERVE_RATE_LIMIT_PER_MINUTE": "0", "MINDGUARD_SERVE_ACCESS_LOG": "false",
               "MINDGUARD_SERVE_LOG_LEVEL": "warning", "MINDGUARD_SERVE_GUARD_TIMEOUT_S": "60",
               "MINDGUARD_SERVE_GUARD_MAX_BATCH": str(args.guard_max_batch)}
        log = open(Path(tmp) / "server.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "mindguard", "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            t_start = time.perf_counter()
            while True:
                if proc.poll() is not None:
                    log.close()
                    print((Path(tmp) / "server.log").read_text()[-2000:], file=sys.stderr)
                    return 1
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            print(f"server ready in {time.perf_counter() - t_start:.1f}s; guard {guard}{note}")
            lat, errors, wall = asyncio.run(run_load(url, key, args))
            metrics = httpx.get(url + "/metrics").text
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    def metric(name: str) -> float:
        m = re.search(rf"^{name} ([0-9.e+-]+)$", metrics, re.M)
        return float(m.group(1)) if m else float("nan")

    batches = metric("mindguard_guard_batch_size_count")
    mean_batch = metric("mindguard_guard_batch_size_sum") / batches if batches else float("nan")
    n = len(lat)
    print(f"POST /v1/assess  concurrency {args.concurrency}  workload {args.workload}, up to {args.messages} messages/conversation "
          f"(last turn assessed)  {os.cpu_count()} CPUs")
    if not n:
        print(f"no successful requests ({errors} errors)")
        return 1
    print(f"requests {n}  errors {errors}  wall {wall:.1f}s  throughput {n / wall:.1f} req/s")
    print(f"latency  p50 {percentile(lat, 50) * 1000:.0f} ms  p90 {percentile(lat, 90) * 1000:.0f} ms  "
          f"p99 {percentile(lat, 99) * 1000:.0f} ms  mean {statistics.mean(lat) * 1000:.0f} ms")
    flags = sum(float(x) for x in re.findall(r"^mindguard_flags_total\{[^}]*\} ([0-9.e+-]+)$", metrics, re.M))
    print(f"guard    mean batch {mean_batch:.1f} requests per call; {flags / (n + args.warmup + errors):.0%} of requests flagged "
          "(each flag is committed to the store before the answer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
