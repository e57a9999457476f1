"""The two-agent dialogue interface shared by the offline and the LLM-driven generators (and by
the red-team attacker).

A *patient* agent plays the user, driven by a `Scenario` (persona + risk trajectory: a sequence
of stages, each with the label its user turns should carry); a *clinician* agent plays the support
companion. `run_dialogue` alternates them under a turn budget. Offline agents know each turn's
label by construction and return it; LLM agents return `label=None` and a judge labels the turns
afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..conversation import Conversation, Message


@dataclass(frozen=True)
class Persona:
    """Who the patient is and how they write."""

    name: str
    age: int
    situation: str
    culture: str = ""
    style: tuple[str, ...] = ()  # e.g. ("terse", "lowercase", "typos", "emoji", "non_native", "rambling")


@dataclass(frozen=True)
class Stage:
    """One phase of a risk trajectory: what happens and the label of its user turns."""

    name: str
    label: str
    min_turns: int = 1
    max_turns: int = 3
    description: str = ""


@dataclass(frozen=True)
class Scenario:
    """A persona, a presenting problem and a trajectory of stages."""

    id: str
    family: str
    persona: Persona
    problem: str
    trajectory: str
    stages: tuple[Stage, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentTurn:
    """What an agent says, and (offline patient only) the label and stage it was written for."""

    content: str
    label: str | None = None
    stage: str | None = None
    done: bool = False
    rationale: str | None = None


@runtime_checkable
class Agent(Protocol):
    """A dialogue participant: `role` is "user" (patient) or "assistant" (clinician)."""

    role: str

    def reply(self, history: Sequence[Message], scenario: Scenario, rng: random.Random) -> AgentTurn: ...


def run_dialogue(patient: Agent, clinician: Agent, scenario: Scenario, rng: random.Random, max_user_turns: int = 40,
                 conv_id: str | None = None, source: str = "synthetic") -> Conversation:
    """Alternate patient and clinician until the patient is done or the budget is spent."""
    messages: list[Message] = []
    for _ in range(max_user_turns):
        turn = patient.reply(messages, scenario, rng)
        messages.append(Message("user", turn.content, turn.label, rationale=turn.rationale))
        if turn.done:
            break
        messages.append(Message("assistant", clinician.reply(messages, scenario, rng).content))
    meta = {"source": source, "family": scenario.family, "scenario": scenario.id, "trajectory": [scenario.trajectory],
            "persona": f"{scenario.persona.name}, {scenario.persona.age}, {scenario.persona.situation}",
            "style": list(scenario.persona.style), "problem": scenario.problem, **dict(scenario.meta)}
    return Conversation(conv_id or scenario.id, tuple(messages), meta)
