"""The guarded clinician loop: attacker ↔ guard ↔ intervention policy ↔ clinician, one conversation.

Each round: the attacker writes a user turn (seeing only what a user sees); the guard assesses it
with the whole conversation so far (a streaming `guard.session()`, so the encoder pays one turn's
cost); if the policy triggers, its message is injected as a system message that only the clinician
sees; the clinician answers. Every assessment, intervention and reply goes into the transcript
record, which is plain JSON (one line of `transcripts.jsonl`).

`synth.run_dialogue` alternates two agents the same way but has no place for a guard between the
turns or for messages only one side sees, hence this loop; it reuses the same `Agent` protocol,
so any patient/clinician agent can play here.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Mapping
from typing import Any

from ..conversation import Message
from ..guards import Assessment, BaseGuard
from ..synth._agents import Agent
from ._policy import InterventionPolicy
from ._strategies import AttackPlan

NO_GUARD = "no-guard"


def _assessment_record(a: Assessment) -> dict[str, Any]:
    return {"label": a.label, "p_unsafe": round(float(a.p_unsafe), 6), "flagged": bool(a.flagged),
            "threshold": round(float(a.threshold), 6),
            "probabilities": {k: round(float(v), 6) for k, v in a.probabilities.items()}}


def run_guarded_conversation(plan: AttackPlan, attacker: Agent, clinician: Agent, guard: BaseGuard | None,
                             policy: InterventionPolicy | None, config: str = NO_GUARD,
                             guard_lock: threading.Lock | None = None) -> dict[str, Any]:
    """Play one planned conversation and return its transcript record.

    The attacker's and clinician's random streams come from the plan's seed, so the same plan
    starts identically under every configuration (and an offline run is reproducible).
    `guard_lock` serialises guard calls when conversations run in parallel threads.
    """
    rng_attacker = random.Random(plan.seed)
    rng_clinician = random.Random(plan.seed ^ 0x5F3759DF)
    lock = guard_lock if guard_lock is not None else contextlib.nullcontext()
    visible: list[Message] = []  # what the user and the guard see
    clinician_view: list[Message] = []  # plus the injected interventions
    session = guard.session() if guard is not None else None
    sent = 0
    turns: list[dict[str, Any]] = []
    ended = "turn_budget"
    for number in range(1, plan.max_turns + 1):
        a = attacker.reply(visible, plan.scenario, rng_attacker)
        text = a.content.strip() or "..."
        user = Message("user", text)
        visible.append(user)
        clinician_view.append(user)
        assessment: Assessment | None = None
        intervention = None
        if session is not None:
            with lock:
                assessment = session.add("user", text)
            if assessment is not None and policy is not None:
                intervention = policy.decide(assessment, sent)
            if intervention is not None:
                sent += 1
                clinician_view.append(Message("system", intervention.message))
        c = clinician.reply(clinician_view, plan.scenario, rng_clinician)
        reply = c.content.strip() or "[empty reply]"
        visible.append(Message("assistant", reply))
        clinician_view.append(Message("assistant", reply))
        if session is not None:
            with lock:
                session.add("assistant", reply)
        turns.append({
            "turn": number, "user": text, "intended_label": a.label, "stage": a.stage, "attacker_note": a.rationale,
            "assessment": _assessment_record(assessment) if assessment is not None else None,
            "intervention": intervention.to_dict() if intervention is not None else None,
            "assistant": reply, "clinician_note": c.rationale,
        })
        if a.done:
            ended = "plan_complete"
            break
    return {
        "config": config, "conversation_id": plan.id, "plan": plan.to_dict(),
        "guard": guard.name if guard is not None else None,
        "policy": policy.to_dict() if (guard is not None and policy is not None) else None,
        "turns": turns, "n_turns": len(turns), "n_interventions": sent, "ended": ended,
    }


def transcript_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation as the clinician saw it: user turns, injected interventions (role
    `system`, marked `intervention: true`) and replies."""
    out: list[dict[str, Any]] = []
    for t in record["turns"]:
        out.append({"role": "user", "content": t["user"]})
        if t.get("intervention"):
            out.append({"role": "system", "content": t["intervention"]["message"], "intervention": True})
        out.append({"role": "assistant", "content": t["assistant"]})
    return out
