"""A whole red-team run: every planned conversation under every guard configuration, judged,
stored append-only, resumable, and summarised into a report.

Output directory:
- `run.json` — the run's fixed settings (models, seed, turn budget, strategies, policy, judge) and
  each configuration's guard identity. A rerun must match them (it may ask for a larger `--n` or
  more configurations); otherwise it stops with an error instead of mixing two experiments.
- `transcripts.jsonl` — one record per finished (configuration, conversation), appended and
  flushed as soon as the conversation ends.
- `judgements.jsonl` — one verdict per transcript, appended after judging.
- `report.json`, `report.md` — rebuilt from the two JSONL files at the end of every run.

Resuming: a rerun reads both files, drops a torn last line left by an interruption, plays only the
conversations without a transcript and judges only the transcripts without a verdict. An
interrupted conversation is replayed from its start (its seed makes an offline replay identical),
so nothing is lost and nothing is recorded twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datasets._jsonl import LockedAppendLog
from ..errors import DataError, MindGuardError, require
from ..guards import BaseGuard, load_guard
from ..llm import ChatClient
from ..llm.openai_compat import LLMServerError
from ..synth._agents import Agent
from ..synth.llm import CLINICIAN_PROMPT, ConversationFailed, TokenMeter
from ._attacker import LLMAttacker, ScriptedAttacker
from ._clinician import LLMClinician, ScriptedClinician
from ._judge import Judge, LLMJudge, RuleJudge
from ._loop import NO_GUARD, run_guarded_conversation
from ._policy import InterventionPolicy
from ._report import build_report, render_markdown
from ._strategies import STRATEGIES, AttackPlan, plan_attacks

SCRIPTED = "scripted"  # the offline attacker / clinician
RULE = "rule"  # the offline judge
RUN_FORMAT = "mindguard-redteam-run"


@dataclass(frozen=True)
class RoleModel:
    """Which model plays a role: `scripted` / `rule` for the offline stand-ins, else a model id
    served at `base_url` (OpenAI-compatible), with the sampling temperature for that role."""

    model: str
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str | None = None
    temperature: float = 0.7

    @property
    def offline(self) -> bool:
        return self.model in (SCRIPTED, RULE)

    def describe(self) -> str:
        return self.model if self.offline else f"{self.model} @ {self.base_url}"


@dataclass(frozen=True)
class RedTeamSettings:
    """Everything that must stay fixed across the reruns of one run."""

    attacker: RoleModel = field(default_factory=lambda: RoleModel(SCRIPTED))
    clinician: RoleModel = field(default_factory=lambda: RoleModel(SCRIPTED))
    judge: RoleModel = field(default_factory=lambda: RoleModel(RULE))
    policy: InterventionPolicy = field(default_factory=InterventionPolicy)
    seed: int = 0
    max_turns: int = 10
    strategies: tuple[str, ...] = STRATEGIES
    judge_samples: int = 3
    harm_rate: float = 0.2
    clinician_system_prompt: str = CLINICIAN_PROMPT

    def __post_init__(self) -> None:
        if self.attacker.model == RULE or self.clinician.model == RULE:
            raise MindGuardError("'rule' is the offline judge; the offline attacker and clinician are 'scripted'")
        if self.judge.model == SCRIPTED:
            raise MindGuardError("the offline judge is called 'rule', not 'scripted'")
        if self.judge.model == RULE and self.attacker.model != SCRIPTED:
            raise MindGuardError("the rule-based judge needs the scripted attacker's turn labels; "
                                 "give --judge-model an LLM when the attacker is an LLM")

    @property
    def simulated_roles(self) -> list[str]:
        return [name for name, r in (("attacker", self.attacker), ("clinician", self.clinician), ("judge", self.judge))
                if r.offline]

    @property
    def effective_judge_samples(self) -> int:
        return 1 if self.judge.model == RULE else self.judge_samples

    def to_dict(self) -> dict[str, Any]:
        """The fixed part of the run, as recorded in run.json and the report (no secrets: only
        the *name* of the API-key variable)."""
        d: dict[str, Any] = {
            "attacker": self.attacker.describe(), "clinician": self.clinician.describe(), "judge": self.judge.describe(),
            "policy": self.policy.to_dict(), "seed": self.seed, "max_turns": self.max_turns,
            "strategies": list(self.strategies), "judge_samples": self.effective_judge_samples,
        }
        temperatures = {name: r.temperature for name, r in (("attacker", self.attacker), ("clinician", self.clinician),
                                                             ("judge", self.judge)) if not r.offline}
        if temperatures:  # the offline stand-ins do not sample
            d["temperatures"] = temperatures
        if self.clinician.model == SCRIPTED:
            d["scripted_clinician"] = {"harm_rate": self.harm_rate}
        else:
            d["clinician_system_prompt_sha256"] = hashlib.sha256(self.clinician_system_prompt.encode()).hexdigest()[:16]
        return d


def config_name(spec: str | None) -> str:
    return NO_GUARD if spec is None else spec


def guard_identity(spec: str | None, guard: BaseGuard | None) -> dict[str, Any]:
    """What makes a configuration's results comparable across reruns: the guard, its operating
    threshold, and a fingerprint of its model files when it has some."""
    if guard is None:
        return {"spec": None}
    ident: dict[str, Any] = {"spec": spec, "name": guard.name, "threshold": round(float(guard.threshold), 6)}
    model_dir = getattr(guard, "model_dir", None)
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        ident["model_config_sha256"] = hashlib.sha256((Path(model_dir) / "config.json").read_bytes()).hexdigest()[:16]
    return ident


class AppendLog(LockedAppendLog):
    """An append-only JSONL file of records keyed by (config, conversation_id), safe to share
    between threads. Opening it locks it and repairs a torn last line (an interrupted write)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.duplicates = 0
        with self.path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = (str(rec["config"]), str(rec["conversation_id"]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(f"{self.path}:{n}: not a red-team record ({exc.__class__.__name__}); "
                                    "was this directory written by `mindguard redteam`?") from None
                if key in self.records:
                    self.duplicates += 1  # never written by this code; keep the first, as a reader would
                    continue
                self.records[key] = rec

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.records

    def append(self, record: dict[str, Any]) -> None:
        """Write one whole line and fsync it before the record counts as done."""
        super().append(record)
        with self._lock:
            self.records[(str(record["config"]), str(record["conversation_id"]))] = record


def _check_manifest(out: Path, settings: Mapping[str, Any], identities: Mapping[str, Mapping[str, Any]]) -> None:
    """Create run.json, or check that this rerun matches it; new configurations are added."""
    path = out / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON ({exc.msg})") from None
        if old.get("format") != RUN_FORMAT:
            raise DataError(f"{path} is not a red-team run manifest")
        for key in sorted(set(old["settings"]) | set(settings)):
            if old["settings"].get(key) != settings.get(key):
                raise MindGuardError(f"{out} holds a run with a different {key} ({old['settings'].get(key)!r} there, "
                                     f"{settings.get(key)!r} now); rerun with the same settings or use a new --out")
        configs = dict(old.get("configs") or {})
        for name, ident in identities.items():
            if name in configs and configs[name] != ident:
                raise MindGuardError(f"{out} holds results for configuration {name!r} with a different guard "
                                     f"({configs[name]} there, {dict(ident)} now); use a new --out")
            configs[name] = dict(ident)
    else:
        configs = {k: dict(v) for k, v in identities.items()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"format": RUN_FORMAT, "version": 1, "settings": dict(settings), "configs": configs},
                              indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _check_plans(plans: Sequence[AttackPlan], transcripts: AppendLog) -> None:
    """The plans already played must be the ones planned now (the persona library, the strategy
    lines or the style transforms may have changed since): mixing them would compare different
    attacks under one name."""
    current = {p.id: p.to_dict() for p in plans}
    for (config, conv_id), rec in transcripts.records.items():
        if conv_id in current and rec.get("plan") != current[conv_id]:
            raise MindGuardError(f"the attack plan of {conv_id} ({config}) differs from the one recorded in "
                                 f"{transcripts.path} (the persona library or strategy lines changed since); "
                                 "use a new --out")


class _Clients:
    """One HTTP client per (model, base URL, key variable), shared by all threads."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, str | None], ChatClient] = {}
        self._lock = threading.Lock()

    def get(self, role: RoleModel, max_concurrency: int) -> ChatClient:
        key = (role.model, role.base_url, role.api_key_env)
        with self._lock:
            if key not in self._clients:
                require("httpx", "llm")
                from ..llm.openai_compat import OpenAICompatClient

                self._clients[key] = OpenAICompatClient(role.model, base_url=role.base_url, api_key_env=role.api_key_env,
                                                        max_concurrency=max_concurrency)
            return self._clients[key]

    def close(self) -> None:
        for c in self._clients.values():
            close = getattr(c, "close", None)
            if close is not None:
                close()


@dataclass
class RedTeamRun:
    """Plays, judges and reports a run into `out`.

    `configs` are guard specs (`keyword`, `encoder:operating_point=tpr90`, …) with None for the
    unguarded baseline; `guards` may pass already-built guards by spec (tests, the server).
    `clients` may inject `ChatClient`s by role name ("attacker", "clinician", "judge").
    A conversation whose LLM calls fail (an empty answer twice, a server error that retries did not
    cure) is skipped and left for the next run; `max_consecutive_failures` in a row stop the run,
    and errors every request would hit (unreachable server, rejected key, unknown model) stop it
    at once.
    """

    out: Path
    configs: Sequence[str | None]
    n: int
    settings: RedTeamSettings = field(default_factory=RedTeamSettings)
    workers: int = 1
    progress: bool = True
    guards: Mapping[str, BaseGuard] = field(default_factory=dict)
    clients: Mapping[str, ChatClient] = field(default_factory=dict)
    max_consecutive_failures: int = 5
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.configs:
            raise MindGuardError("choose at least one configuration: --no-guard and/or --guard NAME")
        names = [config_name(c) for c in self.configs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise MindGuardError(f"configuration {dup[0]!r} is given twice")
        if self.workers < 1:
            raise MindGuardError(f"--workers must be at least 1, got {self.workers}")
        self._http = _Clients()

    # -- the parts ------------------------------------------------------------------------------
    def _client(self, role: str, spec: RoleModel) -> ChatClient:
        if role in self.clients:
            return self.clients[role]
        return self._http.get(spec, max_concurrency=max(2, self.workers))

    def _attacker(self, plan: AttackPlan, meter: TokenMeter) -> Agent:
        s = self.settings.attacker
        if s.model == SCRIPTED:
            return ScriptedAttacker(plan)
        return LLMAttacker(self._client("attacker", s), plan, temperature=s.temperature, meter=meter)

    def _clinician(self, meter: TokenMeter) -> Agent:
        s = self.settings.clinician
        if s.model == SCRIPTED:
            return ScriptedClinician(harm_rate=self.settings.harm_rate)
        return LLMClinician(self._client("clinician", s), self.settings.clinician_system_prompt,
                            temperature=s.temperature, intervention_role=self.settings.policy.role, meter=meter)

    def _judge(self) -> Judge:
        s = self.settings.judge
        if s.model == RULE:
            return RuleJudge()
        return LLMJudge(self._client("judge", s), k=self.settings.judge_samples, temperature=s.temperature,
                        name=s.model)

    def _load_guard(self, spec: str | None) -> BaseGuard | None:
        if spec is None:
            return None
        if spec in self.guards:
            return self.guards[spec]
        return load_guard(spec)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Play what is missing, judge what is unjudged, write and return the report."""
        plans = plan_attacks(self.n, self.settings.seed, self.settings.strategies, self.settings.max_turns)
        guards = {config_name(c): self._load_guard(c) for c in self.configs}
        identities = {config_name(c): guard_identity(c, guards[config_name(c)]) for c in self.configs}
        with contextlib.ExitStack() as stack:
            stack.callback(self._http.close)
            transcripts = AppendLog(self.out / "transcripts.jsonl")  # locks the directory for this run
            stack.callback(transcripts.close)
            judgements = AppendLog(self.out / "judgements.jsonl")
            stack.callback(judgements.close)
            _check_manifest(self.out, self.settings.to_dict(), identities)
            if transcripts.repaired or judgements.repaired:
                self.log("redteam: dropped a torn last line left by an interrupted run")
            _check_plans(plans, transcripts)
            judge = self._judge()
            locks = {name: threading.Lock() for name in guards}
            todo = [(name, plan) for name in guards for plan in plans
                    if (name, plan.id) not in transcripts or (name, plan.id) not in judgements]
            total = len(guards) * len(plans)
            if total - len(todo):
                self.log(f"redteam: resuming {self.out}: {total - len(todo)} of {total} conversations already done")

            def one(name: str, plan: AttackPlan) -> None:
                key = (name, plan.id)
                if key not in transcripts:
                    meter = TokenMeter()
                    record = run_guarded_conversation(plan, self._attacker(plan, meter), self._clinician(meter),
                                                      guards[name], self.settings.policy if guards[name] is not None else None,
                                                      config=name, guard_lock=locks[name])
                    record["tokens"] = _tokens(meter)
                    transcripts.append(record)
                if key not in judgements:
                    meter = TokenMeter()
                    verdict = judge.judge(transcripts.records[key], meter)
                    judgements.append({"config": name, "conversation_id": plan.id, "judge": judge.name,
                                       "judge_samples": self.settings.effective_judge_samples, "tokens": _tokens(meter),
                                       **verdict.to_dict()})

            failures = self._execute(todo, one)
            report = self.write_report(plans, transcripts, judgements)
        if failures:
            self.log(f"redteam: {len(failures)} conversation(s) failed and are left out of the report; "
                     f"rerun the same command to retry them (first: {failures[0]})")
        report["failed_this_run"] = failures
        return report

    def _attempt(self, one: Callable[[str, AttackPlan], None], name: str, plan: AttackPlan) -> str | None:
        """Run one conversation; a failure of that conversation alone comes back as a message
        (the run goes on, a rerun retries it), errors every request would hit propagate."""
        try:
            one(name, plan)
        except ConversationFailed as exc:
            return f"{name}/{plan.id}: {exc}"
        except LLMServerError as exc:
            if exc.fatal:
                raise
            return f"{name}/{plan.id}: {exc}"
        return None

    def _execute(self, todo: Sequence[tuple[str, AttackPlan]], one: Callable[[str, AttackPlan], None]) -> list[str]:
        failures: list[str] = []
        streak = 0

        def account(msg: str | None) -> None:
            nonlocal streak
            if msg is None:
                streak = 0
                return
            failures.append(msg)
            streak += 1
            self.log(f"redteam: conversation failed: {msg}")
            if streak >= self.max_consecutive_failures:
                raise MindGuardError(f"{streak} conversations failed in a row; last: {msg}")

        bar = None
        if self.progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="redteam", unit="conv", file=sys.stderr)
        try:
            if self.workers == 1:
                for name, plan in todo:
                    account(self._attempt(one, name, plan))
                    if bar is not None:
                        bar.update(1)
                return failures
            pool = ThreadPoolExecutor(max_workers=self.workers)
            try:
                pending = {pool.submit(self._attempt, one, name, plan) for name, plan in todo}
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    if bar is not None:
                        bar.update(len(finished))
                    for f in finished:
                        account(f.result())  # re-raises what the conversation raised
            except BaseException:
                # stop at once (Ctrl-C, a server that went away): conversations in flight finish
                # and are recorded, queued ones are dropped and played by the next run
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
            return failures
        finally:
            if bar is not None:
                bar.close()

    def write_report(self, plans: Sequence[AttackPlan], transcripts: AppendLog, judgements: AppendLog) -> dict[str, Any]:
        """Build report.json / report.md from the records of the planned conversations (those
        that failed this time are counted as missing)."""
        names = [config_name(c) for c in self.configs]
        done = {n: [p.id for p in plans if (n, p.id) in transcripts and (n, p.id) in judgements] for n in names}
        records = {n: [transcripts.records[(n, i)] for i in done[n]] for n in names}
        verdicts = {n: {i: judgements.records[(n, i)] for i in done[n]} for n in names}
        report = build_report(names, records, verdicts, self.settings.to_dict(), self.settings.simulated_roles)
        report["n_planned"] = len(plans)
        report["missing"] = {n: len(plans) - len(done[n]) for n in names}
        (self.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (self.out / "report.md").write_text(render_markdown(report), encoding="utf-8")
        return report


def _tokens(meter: TokenMeter) -> dict[str, Any]:
    """Token usage per role of one conversation or judgement (empty offline)."""
    return {k: v for k, v in meter.totals().items() if isinstance(v, dict)}


def run_redteam(out: str | Path, configs: Sequence[str | None], n: int, settings: RedTeamSettings | None = None,
                **kwargs: Any) -> dict[str, Any]:
    """Run (or resume) a red team into `out` and return the report. See `RedTeamRun`."""
    return RedTeamRun(Path(out), list(configs), n, settings or RedTeamSettings(), **kwargs).run()
