"""`mindguard train-llm`: fine-tune a generative guard (e.g. Qwen3Guard-Gen) on labelled conversations.

Parses the options into an `LLMTrainConfig` and calls `sft_trainer.train_llm`; `--dry-run` builds
and counts the examples (tokenizer only, no model, no TRL) and `--write-examples` saves them as
prompt-completion JSONL for inspection or other trainers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import MindGuardError


def add_command(sub: Any) -> None:
    t = sub.add_parser("train-llm", help="fine-tune a generative guard (Qwen3Guard-Gen, …) with TRL + PEFT",
                       description="Fine-tune a causal LM to write the verdict for every labelled user turn, given the "
                                   "conversation up to it. The output directory loads with --guard hf:DIR. Needs "
                                   "pip install 'mindguard[train-llm]'.")
    t.add_argument("--base", required=True, help="base model: hub name (e.g. Qwen/Qwen3Guard-Gen-4B) or local directory")
    t.add_argument("--data", action="append", required=True, help="training conversations (native JSONL, testset, authored .txt); repeatable")
    t.add_argument("--val", action="append", default=[], help="validation conversations, scored with our evaluator at each evaluation; repeatable")
    t.add_argument("--out", required=True, help="output directory (model or LoRA adapter, tokenizer, checkpoints/)")
    g = t.add_argument_group("examples")
    g.add_argument("--format", default="auto", choices=("auto", "mindguard", "qwen3guard", "llamaguard"),
                   help="verdict format and prompt: auto (from the base name), mindguard (our taxonomy as system text), "
                        "qwen3guard (stock Qwen3Guard-Gen template), llamaguard")
    g.add_argument("--policy-file", help="custom policy text for the mindguard prompt (default: our taxonomy)")
    g.add_argument("--max-length", type=int, default=4096, help="most tokens per example; older messages are dropped to fit")
    g.add_argument("--unsafe-share", type=float, default=None, help="class balance: share of unsafe examples to reach")
    g.add_argument("--balance", default="downsample", choices=("downsample", "upsample"),
                   help="reach --unsafe-share by dropping turns of the larger class or repeating those of the smaller")
    g.add_argument("--drop-hard-negatives", action="store_true",
                   help="when dropping safe turns, treat hard negatives like any other (default: keep them first)")
    g.add_argument("--write-examples", metavar="JSONL", help="also write the training examples (prompt, completion)")
    g.add_argument("--dry-run", action="store_true", help="build and count the examples, then stop (no model, no training)")
    m = t.add_argument_group("model and optimisation")
    m.add_argument("--method", default="lora", choices=("lora", "full"))
    m.add_argument("--lora-r", type=int, default=16)
    m.add_argument("--lora-alpha", type=int, default=32)
    m.add_argument("--lora-dropout", type=float, default=0.05)
    m.add_argument("--lora-targets", default="all-linear", help="modules LoRA adapts (peft target_modules)")
    m.add_argument("--merge", action="store_true", help="save LoRA merged into the base weights (a plain model directory)")
    m.add_argument("--epochs", type=float, default=2.0)
    m.add_argument("--max-steps", type=int, default=-1, help="optimizer steps; overrides --epochs when positive")
    m.add_argument("--batch-size", type=int, default=4, help="examples per device per step")
    m.add_argument("--grad-accum", type=int, default=4, help="gradient accumulation steps")
    m.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4 for LoRA, 1e-5 for full)")
    m.add_argument("--warmup-ratio", type=float, default=0.03)
    m.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: bf16 on a GPU that supports it, else fp32")
    m.add_argument("--no-gradient-checkpointing", action="store_true")
    m.add_argument("--packing", action="store_true", help="pack examples into --max-length rows (refused where examples "
                                                          "would attend to each other)")
    m.add_argument("--attn-implementation", default=None, help="e.g. sdpa, flash_attention_2")
    m.add_argument("--trust-remote-code", action="store_true")
    e = t.add_argument_group("evaluation and checkpoints")
    e.add_argument("--eval-steps", type=int, default=200, help="evaluate (and checkpoint) every N steps")
    e.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps (default: --eval-steps)")
    e.add_argument("--save-total-limit", type=int, default=3)
    e.add_argument("--eval-conversations", type=int, default=None, help="score only the first N validation conversations")
    e.add_argument("--eval-batch-size", type=int, default=8)
    e.add_argument("--keep-best", action="store_true", help="end with the checkpoint of best validation AUROC")
    e.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint under --out (or the one given)")
    t.add_argument("--logging-steps", type=int, default=10)
    t.add_argument("--seed", type=int, default=13)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from .sft import Sampling
    from .sft_trainer import LLMTrainConfig

    policy = None
    if args.policy_file:
        try:
            policy = Path(args.policy_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise MindGuardError(f"cannot read the policy file {args.policy_file!r}: {exc.strerror}") from exc
    sampling = Sampling(unsafe_share=args.unsafe_share, method=args.balance,
                        keep_hard_negatives=not args.drop_hard_negatives, seed=args.seed)
    return LLMTrainConfig(
        base=args.base, family=args.format, policy=policy, max_length=args.max_length, method=args.method,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=args.lora_targets,
        merge=args.merge, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, learning_rate=args.lr, warmup_ratio=args.warmup_ratio, precision=args.precision,
        gradient_checkpointing=not args.no_gradient_checkpointing, packing=args.packing,
        eval_steps=args.eval_steps, save_steps=args.save_steps or args.eval_steps,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps,
        eval_conversations=args.eval_conversations, eval_batch_size=args.eval_batch_size, keep_best=args.keep_best,
        sampling=sampling, seed=args.seed, attn_implementation=args.attn_implementation,
        trust_remote_code=args.trust_remote_code)


def _dry_run(args: argparse.Namespace, cfg: Any, train: list[Any]) -> int:
    """Examples only: needs the base model's tokenizer, not the model or TRL."""
    import transformers

    from .sft import ExampleBuilder, write_examples
    from .sft_trainer import build_split

    try:
        tok = transformers.AutoTokenizer.from_pretrained(cfg.base, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise MindGuardError(f"cannot load the tokenizer of {cfg.base!r}: {str(exc).splitlines()[0]}") from exc
    from ..taxonomy import render_policy

    family = cfg.resolved_family()
    builder = ExampleBuilder(tok, family, (cfg.policy or render_policy()) if family == "mindguard" else None,
                             cfg.max_length)
    examples, stats = build_split(train, builder, cfg.sampling, not args.quiet, "train examples")
    if args.write_examples:
        write_examples(args.write_examples, examples)
    print(json.dumps({"family": family, "train": stats.to_dict()}, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from ..datasets import load_conversations

    cfg = _config(args)
    if not args.dry_run:
        from .sft_trainer import require_stack

        require_stack(cfg.method == "lora")  # before reading the data: fail fast when the extra is missing
    if args.threads:
        torch.set_num_threads(args.threads)
    train = [c for p in args.data for c in load_conversations(p)]
    val = [c for p in args.val for c in load_conversations(p)]
    if args.dry_run:
        return _dry_run(args, cfg, train)
    from .sft_trainer import train_llm

    summary = train_llm(train, val, args.out, cfg, resume=args.resume, progress=not args.quiet,
                        examples_path=args.write_examples)
    print(json.dumps(summary, indent=2))
    evaluate_on = args.val[0] if args.val else "DATA"
    print(f"evaluate with: mindguard eval --data {evaluate_on} --guard hf:{args.out} --out REPORT_DIR", file=sys.stderr)
    return 0
