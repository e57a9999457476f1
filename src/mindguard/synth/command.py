"""`mindguard synth`: generate labelled multi-turn conversations, offline or with LLM agents.

`--offline` runs the phrase-bank engine (`synth.offline`): no model, no network, byte-identical
output for the same `--seed`. Given `--patient-model` instead, it runs the LLM-driven agents
(`synth.llm.generate_llm`) against an OpenAI-compatible server, with a judge labelling every turn.
Both draw their scenarios from the same library (`--scenarios` replaces sections of the packaged one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import MindGuardError

_LLM_ARGS = ("patient_model", "clinician_model", "judge_model", "base_url", "api_key_env", "judge_samples",
             "concurrency", "max_user_turns")


def add_command(sub: Any) -> None:
    s = sub.add_parser("synth", help="generate labelled two-agent conversations (offline engine or LLM agents)",
                       description="Generate labelled multi-turn conversations from the scenario library. "
                                   "--offline needs no model; --patient-model runs LLM agents on an "
                                   "OpenAI-compatible server and labels turns with an LLM judge.")
    s.add_argument("--offline", action="store_true", help="use the offline phrase-bank engine (no LLM)")
    s.add_argument("--n", type=int, default=None, metavar="N", help="number of conversations to generate")
    s.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (same seed, same output)")
    s.add_argument("--out", default=None, metavar="FILE", help="output native JSONL file")
    s.add_argument("--scenarios", default=None, metavar="FILE",
                   help="JSON scenario library (sections personas / problems / trajectories replace the packaged ones)")
    s.add_argument("--list", action="store_true", help="print the scenario library's size and trajectories, then exit")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    g = s.add_argument_group("LLM-driven generation (without --offline)")
    g.add_argument("--patient-model", default=None, metavar="MODEL", help="model that plays the patient")
    g.add_argument("--clinician-model", default=None, metavar="MODEL", help="model that plays the clinician (default: the patient model)")
    g.add_argument("--judge-model", default=None, metavar="MODEL", help="model that labels the turns (default: the clinician model)")
    g.add_argument("--base-url", default=None, metavar="URL", help="OpenAI-compatible endpoint (default http://localhost:8000/v1)")
    g.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable holding the API key")
    g.add_argument("--judge-samples", type=int, default=None, metavar="K", help="judge samples per turn, majority vote (default 3)")
    g.add_argument("--concurrency", type=int, default=None, metavar="C", help="conversations generated in parallel (default 4)")
    g.add_argument("--max-user-turns", type=int, default=None, metavar="T", help="cap on user turns per conversation (default 40)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .library import load_library, scenario_summary

    library = load_library(args.scenarios)
    if args.list:
        summary = scenario_summary(library)
        summary["trajectory_list"] = [{"name": t.name, "family": t.family, "weight": t.weight, "tags": list(t.tags),
                                       "stages": [f"{st.name}:{st.label}" for st in t.stages]} for t in library.trajectories]
        print(json.dumps(summary, indent=2))
        return 0
    if args.n is None or args.out is None:
        raise MindGuardError("synth needs --n N and --out FILE (or --list)")
    if args.n < 1:
        raise MindGuardError(f"--n must be at least 1, got {args.n}")
    llm_given = [a for a in _LLM_ARGS if getattr(args, a) is not None]
    if args.offline:
        if llm_given:
            flag = "--" + llm_given[0].replace("_", "-")
            raise MindGuardError(f"{flag} is for LLM-driven generation and cannot be combined with --offline")
        return _run_offline(args, library)
    if args.patient_model is None:
        raise MindGuardError("choose a generator: --offline (no LLM), or --patient-model MODEL for LLM-driven "
                             "generation against an OpenAI-compatible server")
    return _run_llm(args, library)


def _run_offline(args: argparse.Namespace, library: Any) -> int:
    from ..datasets import write_native
    from ..taxonomy import is_unsafe
    from .offline import generate_offline

    out = Path(args.out)
    if out.is_dir():
        raise MindGuardError(f"{out}: is a directory, expected an output file")
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.n, desc="synth (offline)", unit="conv", file=sys.stderr)
    counts = {"turns": 0, "unsafe": 0}

    def tally(convs: Any) -> Any:
        for c in convs:
            users = c.user_turns()
            counts["turns"] += len(users)
            counts["unsafe"] += sum(bool(m.label and is_unsafe(m.label)) for m in users)
            if bar is not None:
                bar.update(1)
            yield c

    # write next to the target and rename, so a failed run never leaves a half-written corpus behind
    tmp = out.with_name(out.name + ".partial")
    try:
        n = write_native(tmp, tally(generate_offline(library, args.n, args.seed)))
        os.replace(tmp, out)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    share = counts["unsafe"] / max(counts["turns"], 1)
    print(f"wrote {n} conversations ({counts['turns']} user turns, {share:.1%} unsafe) to {out}", file=sys.stderr)
    return 0


def _run_llm(args: argparse.Namespace, library: Any) -> int:
    import importlib

    try:
        llm = importlib.import_module("mindguard.synth.llm")
    except ModuleNotFoundError as exc:  # pragma: no cover - the module ships with the package
        raise MindGuardError("LLM-driven generation needs mindguard.synth.llm, which is not installed") from exc
    from ..llm.openai_compat import OpenAICompatClient

    for flag, value in (("--judge-samples", args.judge_samples), ("--concurrency", args.concurrency),
                        ("--max-user-turns", args.max_user_turns)):
        if value is not None and value < 1:
            raise MindGuardError(f"{flag} must be at least 1, got {value}")
    base_url = args.base_url or "http://localhost:8000/v1"
    concurrency = args.concurrency or 4
    clinician_model = args.clinician_model or args.patient_model
    judge_model = args.judge_model or clinician_model

    def client(model: str) -> Any:
        return OpenAICompatClient(model, base_url=base_url, api_key_env=args.api_key_env, max_concurrency=concurrency)

    summary = llm.generate_llm(library.sample_scenarios(args.n, args.seed), args.n, args.out,
                               client(args.patient_model), client(clinician_model), client(judge_model),
                               k=args.judge_samples or 3, max_user_turns=args.max_user_turns or 40,
                               concurrency=concurrency, seed=args.seed, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0
