"""Overhead of our LLM plumbing, measured against the local fake OpenAI server (no model time):
requests per second through `OpenAICompatClient` at several concurrency limits, and with a fixed
server delay standing in for model latency (shows the concurrency limit turning latency into
throughput); then `openai_compat` guard turns per second. Prints figures; asserts nothing.

    python benchmarks/llm_client_overhead.py [--requests 200] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor

from mindguard.conversation import Message
from mindguard.guards import load_guard
from mindguard.llm import ChatResult, TokenLogprob
from mindguard.llm.fake_server import FakeOpenAIServer
from mindguard.llm.openai_compat import OpenAICompatClient

MSGS = [{"role": "user", "content": "i have been so tired lately and nothing helps"}]


def guard_model(req: dict) -> ChatResult:
    toks = (TokenLogprob("Safety", 0.0), TokenLogprob(":", 0.0),
            TokenLogprob(" Safe", math.log(0.9), {" Safe": math.log(0.9), " Unsafe": math.log(0.1)}),
            TokenLogprob("\nCategories: None", 0.0))
    return ChatResult("Safety: Safe\nCategories: None", toks)


def rate(client: OpenAICompatClient, n: int, workers: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: client.complete(MSGS, logprobs=True, top_logprobs=5), range(n)))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.05, help="simulated model latency in seconds")
    args = ap.parse_args()
    for delay in (0.0, args.delay):
        with FakeOpenAIServer(guard_model, models=("mg",), delay=delay) as s:
            for limit in (1, 4, 16):
                with OpenAICompatClient("mg", base_url=s.url, max_concurrency=limit) as c:
                    r = rate(c, args.requests, 16)
                print(f"server delay {delay * 1000:4.0f} ms  concurrency {limit:2d}: {r:7.1f} requests/s")
    with FakeOpenAIServer(guard_model, models=("mg",), delay=args.delay) as s:
        guard = load_guard(f"openai_compat:model=mg,family=qwen3guard,base_url={s.url},concurrency=16")
        contexts = [[Message("user", f"turn {i}")] for i in range(args.requests)]
        t0 = time.perf_counter()
        guard.assess_batch(contexts)
        print(f"openai_compat guard, server delay {args.delay * 1000:.0f} ms, concurrency 16: "
              f"{len(contexts) / (time.perf_counter() - t0):.1f} turns/s")


if __name__ == "__main__":
    main()
