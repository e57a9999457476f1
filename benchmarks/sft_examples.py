"""Size of an SFT run for `mindguard train-llm`: examples, tokens per example and per epoch, contexts
shortened to fit, and how fast the examples are built on this CPU. Prints figures; asserts nothing.

Token counts need the base model's tokenizer. Without `--tokenizer` (this machine cannot download
one) a stand-in is used: the word-level ChatML tokenizer of the tests (tests/tiny_causal_lm.py),
built over the data, which counts words and punctuation marks — within roughly 15 % of a BPE
tokenizer such as Qwen's on English chat text. The stand-in's ChatML template is bare: Qwen3Guard-Gen's
stock template adds its own instruction block (a few hundred tokens) to every `qwen3guard` example.

    python benchmarks/sft_examples.py --data data/authored_train.jsonl --data data/synthetic.jsonl \
        [--format mindguard|qwen3guard] [--max-length 4096] [--unsafe-share 0.3] [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mindguard.datasets import load_conversations
from mindguard.taxonomy import render_policy
from mindguard.train.sft import ExampleBuilder, Sampling
from mindguard.train.sft_trainer import build_split


def stand_in_tokenizer(texts: list[str]) -> object:
    # the tests' tiny tokenizer builder, reused rather than copied (run from the repository root)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformers import AutoTokenizer

    from tests.tiny_causal_lm import build_tokenizer

    path = Path(tempfile.mkdtemp()) / "tok"
    build_tokenizer(path, texts)
    return AutoTokenizer.from_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--format", default="mindguard", choices=("mindguard", "qwen3guard", "llamaguard"))
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--unsafe-share", type=float, default=None)
    ap.add_argument("--tokenizer", help="a local tokenizer directory (e.g. a downloaded Qwen3Guard-Gen-4B)")
    args = ap.parse_args()

    convs = [c for p in args.data for c in load_conversations(p)]
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        which = args.tokenizer
    else:
        tok = stand_in_tokenizer([m.content for c in convs for m in c.messages])
        which = "stand-in word-level ChatML tokenizer (words and punctuation)"
    policy = render_policy() if args.format == "mindguard" else None
    builder = ExampleBuilder(tok, args.format, policy, args.max_length)
    t0 = time.perf_counter()
    examples, stats = build_split(convs, builder, Sampling(unsafe_share=args.unsafe_share), progress=False)
    seconds = time.perf_counter() - t0
    lengths = sorted(e.n_tokens for e in examples)
    d = stats.to_dict()
    print(f"tokenizer            {which}")
    print(f"data                 {', '.join(args.data)}: {len(convs)} conversations")
    print(f"format               {args.format} (max length {args.max_length})")
    print(f"examples             {d['examples']}  {d['by_label']}  unsafe share {d['unsafe_share']}")
    print(f"tokens per example   mean {statistics.fmean(lengths):.0f}  p50 {lengths[len(lengths) // 2]}  "
          f"p90 {lengths[int(0.9 * (len(lengths) - 1))]}  max {lengths[-1]}")
    print(f"tokens per epoch     {sum(lengths) / 1e6:.1f} M")
    print(f"contexts shortened   {d['truncated_contexts']}   turns left out (too long) {d['left_out_too_long']}")
    print(f"build speed          {len(examples) / seconds:.0f} examples/s on this CPU ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
