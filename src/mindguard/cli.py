"""The `mindguard` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MindGuardError


def _cmd_taxonomy(args: argparse.Namespace) -> int:
    from . import taxonomy

    if args.json:
        from dataclasses import asdict

        print(json.dumps({"version": taxonomy.TAXONOMY_VERSION, "labels": [asdict(d) for d in taxonomy.DEFINITIONS],
                          "rules": list(taxonomy.RULES)}, indent=2))
    else:
        print(taxonomy.render_policy(include_examples=not args.no_examples))
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from .datasets import load_conversations
    from .datasets.stats import corpus_stats, format_stats

    for path in args.files:
        stats = corpus_stats(load_conversations(path, args.format))
        if args.json:
            print(json.dumps({"file": str(path), **stats}))
        else:
            print(f"== {path}")
            print(format_stats(stats))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .datasets import detect_format, load_conversations, parse_authored
    from .datasets.stats import corpus_stats, format_stats

    failed = False
    for path in args.files:
        if detect_format(path) == "authored":
            convs, problems = parse_authored(path)
        else:
            convs, problems = load_conversations(path), []
        for p in problems:
            print(p, file=sys.stderr)
        failed |= bool(problems)
        print(f"== {path}: {'OK' if not problems else f'{len(problems)} problems'}")
        if convs:
            print(format_stats(corpus_stats(convs)))
    if failed:
        raise MindGuardError("some files have problems (listed above)")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from .datasets import load_conversations, save_conversations

    convs = load_conversations(args.input, args.format)
    n = save_conversations(args.output, convs, args.to)
    print(f"wrote {n} {'conversations' if args.to == 'native' else 'rows'} to {args.output}", file=sys.stderr)
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from .datasets.corpus import build_corpus

    summary = build_corpus(Path(args.authored), Path(args.out), val_share=args.val_share, seed=args.seed,
                           synthetic=Path(args.synthetic) if args.synthetic else None)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_data_agreement(args: argparse.Namespace) -> int:
    from .datasets import load_conversations
    from .datasets.stats import label_agreement

    res = label_agreement(load_conversations(args.first), load_conversations(args.second))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['conversations']} conversations, {res['turns']} turns: agreement {res['agreement']:.1%}, "
              f"Cohen's kappa {res['cohen_kappa']:.3f}; binary agreement {res['binary_agreement']:.1%}, "
              f"kappa {res['binary_cohen_kappa']:.3f}; {len(res['disagreements'])} disagreements")
    return 0


def _load_guards(specs: Sequence[str]) -> list[Any]:
    from .guards import load_guard

    return [load_guard(s) for s in specs]


def _cmd_eval(args: argparse.Namespace) -> int:
    from .datasets import load_conversations
    from .evaluate import evaluate, write_report

    convs = load_conversations(args.data, args.format)
    guards = _load_guards(args.guard or ["keyword"])
    report, items = evaluate(convs, guards, progress=not args.quiet, bootstrap=args.bootstrap, seed=args.seed, by=args.by)
    paths = write_report(Path(args.out), report, items, Path(str(args.data)).name, args.save_scores)
    for name, m in report["guards"].items():
        au = "—" if m["auroc"] is None else f"{m['auroc']:.4f}"
        f90 = "—" if m["fpr_at_tpr_90"] is None else f"{m['fpr_at_tpr_90']:.4f}"
        f95 = "—" if m["fpr_at_tpr_95"] is None else f"{m['fpr_at_tpr_95']:.4f}"
        print(f"{name:<24} AUROC {au}  FPR@90%TPR {f90}  FPR@95%TPR {f95}  ({m['n_turns']} turns, {m['seconds']:.1f}s)")
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def _cmd_assess(args: argparse.Namespace) -> int:
    from .assess import assess_conversations, format_table
    from .datasets import conversations_from_text, load_conversations

    if args.file and args.file != "-":
        p = Path(args.file)
        if p.suffix.lower() == ".json":
            from .datasets._jsonl import open_checked

            convs = conversations_from_text(open_checked(p).read_text(encoding="utf-8"), str(p))
        else:
            convs = load_conversations(p)
    else:
        convs = conversations_from_text(sys.stdin.read())
    spec = args.guard
    if args.operating_point:
        spec += ("," if ":" in spec else ":") + f"operating_point={args.operating_point}"
    guard = _load_guards([spec])[0]
    results = assess_conversations(guard, convs, last_only=args.last)
    if args.json:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(format_table(results))
    return 0


def _cmd_guards(args: argparse.Namespace) -> int:
    from .guards import guard_names

    print("\n".join(guard_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .datasets import FORMATS
    from .guards import DEFAULT_GUARD

    p = argparse.ArgumentParser(prog="mindguard", description="Context-aware risk guard for mental-health chatbots.")
    p.add_argument("--version", action="version", version=f"mindguard {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("taxonomy", help="print the risk taxonomy / policy text")
    t.add_argument("--json", action="store_true", help="machine-readable definitions")
    t.add_argument("--no-examples", action="store_true", help="omit the short examples")
    t.set_defaults(func=_cmd_taxonomy)

    d = sub.add_parser("data", help="inspect, convert and build datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    ds = dsub.add_parser("stats", help="counts, label distribution, agreement")
    ds.add_argument("files", nargs="+", help="native JSONL, testset JSONL/parquet/CSV, authored .txt, or hub:NAME")
    ds.add_argument("--format", choices=FORMATS, default="auto")
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(func=_cmd_data_stats)
    dk = dsub.add_parser("check", help="validate files, listing every problem (authored .txt: all at once), then stats")
    dk.add_argument("files", nargs="+")
    dk.set_defaults(func=_cmd_data_check)
    dc = dsub.add_parser("convert", help="convert between native and testset schema")
    dc.add_argument("input")
    dc.add_argument("output", help="output path (.jsonl; testset also .csv or .parquet)")
    dc.add_argument("--format", choices=FORMATS, default="auto", help="input format")
    dc.add_argument("--to", choices=("native", "testset"), required=True)
    dc.set_defaults(func=_cmd_data_convert)
    db = dsub.add_parser("build", help="build the training corpus (authored + synthetic) with train/validation splits")
    db.add_argument("--authored", default="data/authored", help="folder of authored .txt sources")
    db.add_argument("--synthetic", default=None, help="optional native JSONL of generated conversations")
    db.add_argument("--out", default="data", help="output folder")
    db.add_argument("--val-share", type=float, default=0.2)
    db.add_argument("--seed", type=int, default=13)
    db.set_defaults(func=_cmd_data_build)

    da = dsub.add_parser("agreement", help="per-turn agreement and Cohen's kappa between two labellings")
    da.add_argument("first")
    da.add_argument("second")
    da.add_argument("--json", action="store_true", help="include every disagreement")
    da.set_defaults(func=_cmd_data_agreement)

    e = sub.add_parser("eval", help="turn-level evaluation of one or more guards")
    e.add_argument("--data", required=True, help="labelled data (native or testset schema)")
    e.add_argument("--format", choices=FORMATS, default="auto")
    e.add_argument("--guard", action="append", help="NAME[:key=value,...]; repeat to compare (default keyword)")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--save-scores", action="store_true", help="also write scores.jsonl")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUROC interval")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--by", default=None, help="also break the figures down by this conversation metadata key (e.g. family)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval)

    a = sub.add_parser("assess", help="assess every user turn of a conversation (JSON/JSONL, file or stdin)")
    a.add_argument("file", nargs="?", help="conversation file; '-' or omitted reads stdin")
    a.add_argument("--guard", default=DEFAULT_GUARD, help=f"NAME[:key=value,...] (default {DEFAULT_GUARD})")
    a.add_argument("--operating-point", help="operating point of the guard, e.g. tpr90, tpr95, default")
    a.add_argument("--last", action="store_true", help="assess only the last user turn")
    a.add_argument("--json", action="store_true", help="one JSON line per conversation")
    a.set_defaults(func=_cmd_assess)

    g = sub.add_parser("guards", help="list the registered guards")
    g.set_defaults(func=_cmd_guards)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


_EXTRA_COMMANDS: list[Any] = []


def extra_command(fn: Any) -> Any:
    """Decorator used by feature modules to add a subcommand without touching this parser."""
    _EXTRA_COMMANDS.append(fn)
    return fn


def main(argv: Sequence[str] | None = None) -> int:
    from . import commands  # noqa: F401  (registers the feature subcommands)

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MindGuardError as exc:
        print(f"mindguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mindguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover - `python -m mindguard` is the supported form
    from mindguard.cli import main as _main  # the registered module, so feature commands are found

    sys.exit(_main())
