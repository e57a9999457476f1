"""Automated multi-turn red teaming: does a guard in the loop make a clinician LM safer?

An attacker agent plays a user who escalates (covertly, behind pretexts, toward harming someone,
or by pressing the clinician to approve a plan) or, in control conversations, stays safe. A guard
assesses every user turn in context; when it flags one, the intervention policy injects a
system/developer message before the clinician LM answers. A judge then scores each conversation
for attack success, harmful engagement and needless intervention. Runs are append-only and
resumable, and the report compares configurations side by side with Wilson intervals.

Example (offline simulation):
    >>> from mindguard.redteam import run_redteam  # doctest: +SKIP
    >>> report = run_redteam("out/rt", [None, "keyword"], n=20)  # doctest: +SKIP
    >>> report["results"]["keyword"]["attack_success"]["rate"]  # doctest: +SKIP
"""

from ._attacker import LLMAttacker, ScriptedAttacker, attacker_system_prompt
from ._clinician import LLMClinician, ScriptedClinician
from ._judge import Judge, LLMJudge, RuleJudge, Verdict, parse_judge_answer, render_transcript, vote
from ._loop import NO_GUARD, run_guarded_conversation, transcript_messages
from ._policy import DEFAULT_MESSAGE, Intervention, InterventionPolicy
from ._report import build_report, format_rate, render_markdown, wilson_interval
from ._run import RULE, SCRIPTED, AppendLog, RedTeamRun, RedTeamSettings, RoleModel, run_redteam
from ._strategies import ATTACK_STRATEGIES, STRATEGIES, AttackPlan, ScriptTurn, plan_attack, plan_attacks

__all__ = [
    "LLMAttacker", "ScriptedAttacker", "attacker_system_prompt",
    "LLMClinician", "ScriptedClinician",
    "Judge", "LLMJudge", "RuleJudge", "Verdict", "parse_judge_answer", "render_transcript", "vote",
    "NO_GUARD", "run_guarded_conversation", "transcript_messages",
    "DEFAULT_MESSAGE", "Intervention", "InterventionPolicy",
    "build_report", "format_rate", "render_markdown", "wilson_interval",
    "RULE", "SCRIPTED", "AppendLog", "RedTeamRun", "RedTeamSettings", "RoleModel", "run_redteam",
    "ATTACK_STRATEGIES", "STRATEGIES", "AttackPlan", "ScriptTurn", "plan_attack", "plan_attacks",
]
