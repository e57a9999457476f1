"""Speed and memory of the embedded encoder guard on this machine. Prints figures; asserts nothing.

- model load time (cold: a fresh process imports mindguard and loads the model);
- batch throughput in user turns per second (`assess_many` over many conversations);
- latency of ONE new user turn in a streaming session, p50/p99, at conversation lengths 2, 10 and 40
  messages (the cost must not grow with length);
- peak resident memory of the process.

    python benchmarks/encoder_speed.py [--model DIR] [--data FILE] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence

from mindguard.conversation import Conversation, Message

USER = ["i dont know anymore", "work was ok i guess", "my sister called again and we fought about mum",
        "honestly i feel like nothing matters lately and i cant sleep", "yeah", "maybe tomorrow",
        "i keep thinking about what he said at the party last week, it was so embarrassing"]
ASSISTANT = ["That sounds really hard. What has been weighing on you the most this week?",
             "I'm glad you told me. How have you been sleeping, and how are you feeling in yourself right now?",
             "It makes sense that you'd feel worn down after all of that. What usually helps, even a little?"]


def synthetic_conversation(n_messages: int, rng: random.Random) -> list[Message]:
    return [Message("user" if i % 2 == 0 else "assistant", rng.choice(USER if i % 2 == 0 else ASSISTANT))
            for i in range(n_messages)]


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="encoder guard speed benchmark")
    ap.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    ap.add_argument("--data", default=None, help="conversations for the batch figure (default: synthetic)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=200, help="timed new turns per conversation length")
    args = ap.parse_args(argv)
    rng = random.Random(0)

    t0 = time.perf_counter()
    from mindguard.guards import load_guard

    spec = "encoder:explain=false" + (f",model={args.model}" if args.model else "") + (f",threads={args.threads}" if args.threads else "")
    guard = load_guard(spec)
    load_s = time.perf_counter() - t0

    if args.data:
        from mindguard.datasets import load_conversations

        convs = load_conversations(args.data)
    else:
        convs = [Conversation(f"b{k}", tuple(synthetic_conversation(30, rng))) for k in range(40)]
    idx = [c.user_turn_indices() for c in convs]
    n_turns = sum(map(len, idx))
    guard._cache.data.clear()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    guard.assess_many(convs, idx)  # type: ignore[attr-defined]
    batch_tps = n_turns / (time.perf_counter() - t0)

    latency = {}
    for length in (2, 10, 40):
        times = []
        for r in range(args.repeats):
            session = guard.session()
            history = synthetic_conversation(length - 1, random.Random(r))
            for m in history:
                session.add(m.role, m.content)
            text = f"{rng.choice(USER)} {r}"  # unseen text: no cache hit
            t = time.perf_counter()
            session.add("user", text)
            times.append((time.perf_counter() - t) * 1000)
        latency[str(length)] = {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(percentile(times, 0.99), 2)}

    out = {
        "model_load_s": round(load_s, 2),
        "batch_turns_per_s": round(batch_tps, 1),
        "batch_turns": n_turns,
        "new_turn_latency": latency,
        "length40_over_length2_p50": round(latency["40"]["p50_ms"] / latency["2"]["p50_ms"], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
