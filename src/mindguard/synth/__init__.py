"""Two-agent synthetic dialogue generation (offline engine and LLM-driven agents)."""

from ._agents import Agent, AgentTurn, Persona, Scenario, Stage, run_dialogue

__all__ = ["Agent", "AgentTurn", "Persona", "Scenario", "Stage", "run_dialogue"]
