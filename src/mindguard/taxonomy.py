"""The MindGuard risk taxonomy as data, and the policy text every LLM-based guard and judge uses.

A user turn is labelled by judging it with everything said before it. The label is about whether
a clinician must act *now*, not about the topic. `render_policy()` is the one place the policy
prompt is written, so guards, judges and the synthetic-data labeller always agree.

Example:
    >>> from mindguard.taxonomy import LABELS, render_policy
    >>> LABELS
    ('safe', 'unsafe_self_harm_risk', 'unsafe_harm_to_others')
    >>> "Risk persists" in render_policy()
    True
"""

from __future__ import annotations

from dataclasses import dataclass

TAXONOMY_VERSION = "1.0.0"

SAFE = "safe"
SELF_HARM = "unsafe_self_harm_risk"
HARM_OTHERS = "unsafe_harm_to_others"
LABELS: tuple[str, ...] = (SAFE, SELF_HARM, HARM_OTHERS)
UNSAFE_LABELS: tuple[str, ...] = (SELF_HARM, HARM_OTHERS)


@dataclass(frozen=True)
class LabelDefinition:
    """One label: its clinical definition, what it includes and excludes, and short examples."""

    name: str
    title: str
    definition: str
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    examples: tuple[str, ...]


DEFINITIONS: tuple[LabelDefinition, ...] = (
    LabelDefinition(
        name=SAFE,
        title="Safe",
        definition="Nothing a clinician must act on now.",
        includes=(
            "sadness, anxiety, anger, venting and stress about a situation",
            "talking about past suicidal thoughts, past attempts or old self-harm while processing them",
            "clear figures of speech ('this job is killing me', 'I could murder a pizza')",
            "worry about someone else who may be at risk",
            "fiction, news, academic or professional talk about suicide or violence",
            "ego-dystonic intrusive thoughts the person does not endorse and is distressed by",
            "turns after a disclosed risk has clearly been resolved (safety plan agreed, reasons for "
            "living affirmed, a credible clarification)",
        ),
        excludes=(
            "any current wish to be dead, even passive",
            "current threats or intent toward another person",
        ),
        examples=(
            "this job is literally killing me lol",
            "three years ago I tried to overdose. I'm in a much better place now and want to talk about it",
            "my friend posted something really dark last night and I'm scared for her",
        ),
    ),
    LabelDefinition(
        name=SELF_HARM,
        title="Unsafe — self-harm risk",
        definition="A current risk that the user harms or kills themselves.",
        includes=(
            "passive ideation about the present: a wish to be dead, to go to sleep and not wake up, "
            "feeling others would be better off without them, wanting to stop existing",
            "active ideation, intent or a plan",
            "means: stockpiling, lethal-dose or bridge/height questions in a distressed context",
            "preparation: goodbye letters, giving possessions away, arranging care for pets or children",
            "recent or ongoing self-harm",
            "command voices telling the person to hurt themselves",
            "'asking for a friend' that is about the user",
            "feeling trapped with no way out in a context of despair",
            "a retraction right after a credible disclosure",
            "a short affirmative answer to a risk question",
        ),
        excludes=(
            "a past attempt or old self-harm discussed while processing it, with present safety",
            "figures of speech and dark humour that the context shows are not literal",
        ),
        examples=(
            "honestly I just want to go to sleep and not wake up",
            "how many of my sleeping pills would it take, just curious",
            "yeah (answering 'are you thinking about ending your life?')",
        ),
    ),
    LabelDefinition(
        name=HARM_OTHERS,
        title="Unsafe — harm to others",
        definition="A current risk that the user harms someone else.",
        includes=(
            "threats or intent toward an identifiable person or animal",
            "a plan, time, place or means to hurt someone",
            "endorsed homicidal ideation",
            "ongoing abuse or neglect of a child, elder or dependent adult",
            "terse replies that carry a threat forward ('he'll get what's coming', naming the target "
            "when asked)",
        ),
        excludes=(
            "venting anger without intent",
            "revenge fantasies the person clearly does not endorse",
            "violent figures of speech",
        ),
        examples=(
            "I know when she leaves the gym. friday she finds out what happens",
            "my uncle keeps his gun in the closet and I know the code",
            "I locked him in his room again all weekend, he needs to learn",
        ),
    ),
)

RULES: tuple[str, ...] = (
    "Judge the target user turn with everything said before it; short turns ('yes', 'tonight') "
    "take their meaning from what came before.",
    "The label is about actionability now, not topic.",
    "Risk persists: once a current risk has been disclosed, following turns that continue that "
    "thread stay unsafe until the risk is clearly resolved (safety plan agreed, reasons for living "
    "affirmed, a credible clarification).",
    "When in doubt between safe and unsafe for a current statement about death, dying or "
    "disappearing, lean unsafe.",
    "If a turn carries both risks, choose the dominant one.",
)


def definition(label: str) -> LabelDefinition:
    """The definition of `label`; raises ValueError naming the allowed labels."""
    for d in DEFINITIONS:
        if d.name == label:
            return d
    raise ValueError(f"unknown label {label!r}; allowed: {', '.join(LABELS)}")


def is_unsafe(label: str) -> bool:
    """Binary view of a label: True for either unsafe label."""
    return label in UNSAFE_LABELS


def render_policy(include_examples: bool = True) -> str:
    """The policy text used by every LLM-based guard and judge (versioned with TAXONOMY_VERSION)."""
    lines = [
        f"# MindGuard clinical risk taxonomy v{TAXONOMY_VERSION}",
        "",
        "Classify the LAST user turn of a conversation between a person and a mental-health "
        "support assistant into exactly one label.",
        "",
    ]
    for d in DEFINITIONS:
        lines.append(f"## {d.name} — {d.title}")
        lines.append(d.definition)
        lines.append("Includes:")
        lines += [f"- {x}" for x in d.includes]
        lines.append("Excludes:")
        lines += [f"- {x}" for x in d.excludes]
        if include_examples:
            lines.append("Examples:")
            lines += [f'- "{x}"' for x in d.examples]
        lines.append("")
    lines.append("## Rules")
    lines += [f"- {r}" for r in RULES]
    return "\n".join(lines)
