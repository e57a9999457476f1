"""`mindguard train`: train the embedded encoder guard from native JSONL files."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import MindGuardError


def add_command(sub: Any) -> None:
    add_train_command(sub)
    add_calibrate_command(sub)


def add_train_command(sub: Any) -> None:
    t = sub.add_parser("train", help="train the embedded encoder guard on the CPU")
    t.add_argument("--data", action="append", required=True, help="training conversations (native JSONL or authored .txt); repeatable")
    t.add_argument("--val", action="append", required=True, help="validation conversations; repeatable")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--base", default="minilm", help="base encoder: 'minilm' (PyPI-packaged) or a local path")
    t.add_argument("--finetune-layers", type=int, default=2, help="top encoder layers to fine-tune (0 = frozen encoder)")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--batch-turns", type=int, default=48, help="user turns per optimisation step")
    t.add_argument("--lr-encoder", type=float, default=5e-5)
    t.add_argument("--lr-head", type=float, default=2e-3)
    t.add_argument("--synthetic-weight", type=float, default=0.5, help="loss weight of generated conversations")
    t.add_argument("--synthetic-limit", type=int, default=None,
                   help="use a seeded random sample of at most N generated conversations (meta source 'synthetic')")
    t.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    t.add_argument("--operating-point", default="tpr95", choices=("tpr90", "tpr95", "default"), help="default operating point stored with the model")
    t.add_argument("--seed", type=int, default=13)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..datasets import load_conversations
    from ..guards.encoder import EncoderConfig
    from .encoder import TrainConfig, train_encoder

    if args.epochs < 1:
        raise MindGuardError("--epochs must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    train = [c for p in args.data for c in load_conversations(p)]
    if args.synthetic_limit is not None:
        import random

        synthetic = [c for c in train if c.meta.get("source") == "synthetic"]
        keep = {id(c) for c in random.Random(args.seed).sample(synthetic, min(args.synthetic_limit, len(synthetic)))}
        train = [c for c in train if c.meta.get("source") != "synthetic" or id(c) in keep]
    val = [c for p in args.val for c in load_conversations(p)]
    cfg = TrainConfig(epochs=args.epochs, batch_turns=args.batch_turns, lr_encoder=args.lr_encoder, lr_head=args.lr_head,
                      synthetic_weight=args.synthetic_weight, seed=args.seed, max_minutes=args.max_minutes,
                      default_operating_point=args.operating_point)
    enc = EncoderConfig(base=args.base, finetune_layers=args.finetune_layers)
    train_encoder(train, val, args.out, cfg, enc, progress=not args.quiet)
    return 0


def add_calibrate_command(sub: Any) -> None:
    c = sub.add_parser("calibrate", help="choose operating points of an encoder model on your own labelled data")
    c.add_argument("--model", required=True, help="encoder model directory (it is updated in place)")
    c.add_argument("--data", required=True, help="labelled conversations (native or testset schema)")
    c.add_argument("--prefix", default="custom", help="operating points are stored as PREFIX_tpr90 and PREFIX_tpr95")
    c.add_argument("--set-default", default=None, help="make this operating point the model's default")
    c.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from ..datasets import load_conversations
    from .encoder import add_operating_points

    new = add_operating_points(args.model, load_conversations(args.data), args.prefix, args.set_default)
    for k, v in new.items():
        print(f"{k} = {v:.4f}")
    return 0
