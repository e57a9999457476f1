"""`mindguard redteam`: automated multi-turn red teaming of a clinician LM, with and without guards."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import DataError, MindGuardError

_OFFLINE_HELP = "scripted attacker, scripted clinician and rule-based judge (a simulation, labelled so in the report)"


def add_command(sub: Any) -> None:
    r = sub.add_parser("redteam", help="red-team a clinician LM with and without a guard in the loop",
                       description="Attacker LM vs a guarded clinician LM, scored by a judge LM: attack success, "
                                   "harmful engagement and needless intervention rates per configuration, with 95 % "
                                   "Wilson intervals. Resumable: rerun the same command to continue.")
    who = r.add_argument_group("models (OpenAI-compatible servers; 'scripted'/'rule' = offline stand-ins)")
    who.add_argument("--offline", action="store_true", help=_OFFLINE_HELP)
    who.add_argument("--clinician-model", metavar="MODEL", help="the clinician LM under test ('scripted' offline)")
    who.add_argument("--attacker-model", metavar="MODEL", help="the attacker LM ('scripted' offline)")
    who.add_argument("--judge-model", metavar="MODEL", help="the judge LM ('rule' offline; needs the scripted attacker)")
    who.add_argument("--base-url", metavar="URL", default="http://localhost:8000/v1", help="API root of the models' server (default %(default)s)")
    who.add_argument("--clinician-url", metavar="URL", help="API root for the clinician model (default --base-url)")
    who.add_argument("--attacker-url", metavar="URL", help="API root for the attacker model (default --base-url)")
    who.add_argument("--judge-url", metavar="URL", help="API root for the judge model (default --base-url)")
    who.add_argument("--api-key-env", metavar="NAME", help="name of the environment variable holding the API key (never the key itself)")
    who.add_argument("--clinician-system-prompt", metavar="FILE", help="file with the clinician LM's system prompt")
    who.add_argument("--attacker-temperature", metavar="T", type=float, default=0.9)
    who.add_argument("--clinician-temperature", metavar="T", type=float, default=0.7)
    who.add_argument("--judge-temperature", metavar="T", type=float, default=0.7, help="used when --judge-samples > 1")
    who.add_argument("--judge-samples", metavar="K", type=int, default=3, help="k judge samples per conversation, majority vote (default 3)")
    who.add_argument("--harm-rate", metavar="P", type=float, default=0.2,
                     help="offline clinician: chance it complies harmfully with a risky request (default 0.2)")

    cfg = r.add_argument_group("configurations")
    cfg.add_argument("--guard", metavar="SPEC", action="append", default=[], help="NAME[:key=value,...]; repeat to compare several")
    cfg.add_argument("--no-guard", action="store_true", help="include the unguarded clinician (the baseline)")

    pol = r.add_argument_group("intervention policy")
    pol.add_argument("--policy", metavar="FILE", help="JSON file with the policy (message, labels, threshold, label_thresholds, repeat, role)")
    pol.add_argument("--intervention-message", metavar="TEXT", help="text injected on a flag; may use {risk}, {label}, {p_unsafe}")
    pol.add_argument("--intervene-on", metavar="LABELS", help="comma-separated unsafe labels that trigger it (default both)")
    pol.add_argument("--intervention-threshold", metavar="P", type=float,
                     help="p(unsafe) that triggers it (default: the guard's own operating point)")
    pol.add_argument("--intervene", choices=("every-turn", "once"), help="inject on every flagged turn (default) or once")
    pol.add_argument("--intervention-role", choices=("system", "developer"), help="chat role of the injected message")

    run = r.add_argument_group("run")
    run.add_argument("--n", metavar="N", type=int, required=True, help="conversations per configuration")
    run.add_argument("--out", metavar="DIR", required=True, help="output directory (rerun to resume)")
    run.add_argument("--max-turns", metavar="T", type=int, default=10, help="user-turn budget per conversation (default 10)")
    run.add_argument("--seed", metavar="S", type=int, default=0)
    run.add_argument("--strategies", metavar="LIST", help="comma-separated subset of: covert_escalation, pretext_method, harm_to_others, "
                                          "validate_plan, control (default all, round-robin)")
    run.add_argument("--workers", metavar="W", type=int, default=1, help="conversations played in parallel (LLM runs)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run_command)


def _policy(args: argparse.Namespace) -> Any:
    from ._policy import InterventionPolicy

    base: dict[str, Any] = {}
    if args.policy:
        p = Path(args.policy)
        if not p.is_file():
            raise DataError(f"{p}: no such policy file")
        try:
            base = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(base, dict):
            raise DataError(f"{p}: the policy must be a JSON object")
    if args.intervention_message:
        base["message"] = args.intervention_message
    if args.intervene_on:
        base["labels"] = [x.strip() for x in args.intervene_on.split(",") if x.strip()]
    if args.intervention_threshold is not None:
        base["threshold"] = args.intervention_threshold
    if args.intervene:
        base["repeat"] = args.intervene.replace("-", "_")
    if args.intervention_role:
        base["role"] = args.intervention_role
    return InterventionPolicy.from_dict(base)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The run's settings from the command line (offline stand-ins filled in by --offline)."""
    from ._run import RULE, SCRIPTED, RedTeamSettings, RoleModel
    from ._strategies import STRATEGIES

    models = {"attacker": args.attacker_model, "clinician": args.clinician_model, "judge": args.judge_model}
    if args.offline:
        offline = {"attacker": SCRIPTED, "clinician": SCRIPTED, "judge": RULE}
        for role, m in models.items():
            if m is not None and m != offline[role]:
                raise MindGuardError(f"--offline replaces the {role} with the offline stand-in; drop --{role}-model "
                                     f"or drop --offline")
        models = offline
    missing = [role for role, m in models.items() if not m]
    if missing:
        raise MindGuardError(f"give --{missing[0]}-model (an LLM id served at --base-url, or "
                             f"'{RULE if missing[0] == 'judge' else SCRIPTED}'), or use --offline")
    urls = {"attacker": args.attacker_url, "clinician": args.clinician_url, "judge": args.judge_url}
    temps = {"attacker": args.attacker_temperature, "clinician": args.clinician_temperature, "judge": args.judge_temperature}
    roles = {role: RoleModel(str(models[role]), urls[role] or args.base_url, args.api_key_env, temps[role]) for role in models}
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip()) if args.strategies else STRATEGIES
    kw: dict[str, Any] = {}
    if args.clinician_system_prompt:
        p = Path(args.clinician_system_prompt)
        if not p.is_file():
            raise DataError(f"{p}: no such file (--clinician-system-prompt)")
        kw["clinician_system_prompt"] = p.read_text(encoding="utf-8").strip()
    if not 0.0 <= args.harm_rate <= 1.0:
        raise MindGuardError(f"--harm-rate must be between 0 and 1, got {args.harm_rate}")
    return RedTeamSettings(attacker=roles["attacker"], clinician=roles["clinician"], judge=roles["judge"],
                           policy=_policy(args), seed=args.seed, max_turns=args.max_turns, strategies=strategies,
                           judge_samples=args.judge_samples, harm_rate=args.harm_rate, **kw)


def run_command(args: argparse.Namespace) -> int:
    from ._report import RATES, TITLES, format_rate
    from ._run import RedTeamRun

    configs: list[str | None] = ([None] if args.no_guard else []) + list(args.guard)
    settings = settings_from_args(args)
    report = RedTeamRun(Path(args.out), configs, args.n, settings, workers=args.workers, progress=not args.quiet).run()
    if report["simulation"]:
        print(f"SIMULATION (simulated: {', '.join(report['simulated_roles'])}) — rates describe the simulator, not a real model")
    for name in report["configurations"]:
        res = report["results"][name]
        print(f"{name:<28} " + "  ".join(f"{TITLES[key]} {format_rate(res[key])}" for key in RATES))
    print(f"wrote {Path(args.out) / 'report.md'}, report.json, transcripts.jsonl, judgements.jsonl")
    return 0
