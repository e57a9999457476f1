"""Verdict formats: render <-> parse round trips, category mapping, scoring from logprobs, prompts."""

from __future__ import annotations

import math

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mindguard.conversation import Message
from mindguard.guards.verdict import (
    FORMATS,
    category_to_label,
    classification_messages,
    family_of,
    llama_guard_template,
    parse_verdict,
    render_transcript,
    unsafe_split,
    verdict_distribution_from_logprobs,
    verdict_p_unsafe,
)
from mindguard.llm import TokenLogprob as T
from mindguard.taxonomy import HARM_OTHERS, LABELS, SAFE, SELF_HARM


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("label", LABELS)
def test_render_parse_round_trip(fmt: str, label: str) -> None:
    f = FORMATS[fmt]
    parsed = parse_verdict(f.render(label, rationale="the user  names\na plan"), f)
    assert parsed is not None and parsed.label == label
    if fmt != "llamaguard":
        assert parsed.rationale == "the user names a plan"


def test_rendered_texts_match_what_the_models_emit() -> None:
    assert FORMATS["mindguard"].render(SAFE) == "Safety: Safe\nCategories: None"
    assert FORMATS["qwen3guard"].render(HARM_OTHERS) == "Safety: Unsafe\nCategories: Violent"
    assert FORMATS["llamaguard"].render(SELF_HARM) == "unsafe\nS1"
    assert FORMATS["llamaguard"].render(SAFE) == "safe"
    with pytest.raises(ValueError, match="unknown label"):
        FORMATS["mindguard"].render("risky")


def test_parse_real_world_answers() -> None:
    q = FORMATS["qwen3guard"]
    assert parse_verdict("Safety: Controversial\nCategories: Suicide & Self-Harm", q).label == SELF_HARM
    assert parse_verdict("Safety: Controversial\nCategories: Suicide & Self-Harm", q, controversial="safe").label == SAFE
    assert parse_verdict("Safety: Unsafe\nCategories: Jailbreak", q).label == SELF_HARM  # unmapped: safer default
    assert parse_verdict("**Safety:** Unsafe", FORMATS["mindguard"]).label == SELF_HARM  # markdown around the key
    assert parse_verdict("Safety: **Unsafe**\nCategories: unsafe_harm_to_others", FORMATS["mindguard"]).label == HARM_OTHERS
    assert parse_verdict("I think this is fine", FORMATS["mindguard"]) is None
    thought = "<think>Safety: Unsafe? no, it is a figure of speech.</think>\nSafety: Safe\nCategories: None"
    assert parse_verdict(thought, FORMATS["mindguard"]).label == SAFE
    lg = FORMATS["llamaguard"]
    assert parse_verdict("\n\nunsafe\nS2", lg).label == HARM_OTHERS
    assert parse_verdict("unsafe\nS11", lg).label == SELF_HARM  # Meta's stock code still understood
    assert parse_verdict("maybe", lg) is None


def test_category_mapping() -> None:
    assert category_to_label("Suicide & Self-Harm") == SELF_HARM
    assert category_to_label("Violent") == HARM_OTHERS
    assert category_to_label("Unsafe — harm to others") == HARM_OTHERS
    assert category_to_label("unsafe_self_harm_risk") == SELF_HARM
    assert category_to_label("child neglect") == HARM_OTHERS
    assert category_to_label("PII") is None and category_to_label("None") is None
    assert category_to_label("s2", {"S2": HARM_OTHERS}) == HARM_OTHERS


def test_family_guess() -> None:
    assert family_of("meta-llama/Llama-Guard-3-8B") == "llamaguard"
    assert family_of("Qwen/Qwen3Guard-Gen-4B") == "qwen3guard"
    assert family_of("swordhealth/MindGuard-8B") == "qwen3guard"
    assert family_of("/models/my-sft") == "mindguard"


def test_unsafe_split_and_p_unsafe() -> None:
    assert unsafe_split(0.8, [HARM_OTHERS]) == {SAFE: pytest.approx(0.2), SELF_HARM: 0.0, HARM_OTHERS: 0.8}
    assert unsafe_split(0.5, [])[SELF_HARM] == 0.25
    assert verdict_p_unsafe({"safe": 0.2, "unsafe": 0.5, "controversial": 0.3}) == pytest.approx(0.8)
    assert verdict_p_unsafe({"safe": 0.2, "unsafe": 0.5, "controversial": 0.3}, "safe") == pytest.approx(0.5)
    assert verdict_p_unsafe({"safe": 0.1, "unsafe": 0.3}) == pytest.approx(0.75)


def lp(p: float) -> float:
    return math.log(p)


def test_logprob_scoring_qwen_style_tokens() -> None:
    toks = [T("Safety", 0.0), T(":", 0.0), T(" Unsafe", lp(0.6), {" Unsafe": lp(0.6), " Safe": lp(0.3), " Contro": lp(0.05),
                                                                  " the": lp(0.05)}), T("\n", 0.0), T("Categories", 0.0)]
    dist = verdict_distribution_from_logprobs(toks, FORMATS["qwen3guard"])
    assert dist == {"unsafe": pytest.approx(0.6), "safe": pytest.approx(0.3), "controversial": pytest.approx(0.05)}


def test_logprob_scoring_split_word_and_merged_token() -> None:
    # the verdict word split over tokens: the first piece decides
    d = verdict_distribution_from_logprobs([T("Safety:", 0.0), T(" Uns", lp(0.7), {" Uns": lp(0.7), " Safe": lp(0.25)}),
                                            T("afe", 0.0)], FORMATS["mindguard"])
    assert d == {"unsafe": pytest.approx(0.7), "safe": pytest.approx(0.25)}
    # text before the verdict word inside the same token
    d = verdict_distribution_from_logprobs([T("Safety: Safe", lp(0.9), {"Safety: Safe": lp(0.9), "Safety: Unsafe": lp(0.1)})],
                                           FORMATS["mindguard"])
    assert d == {"safe": pytest.approx(0.9), "unsafe": pytest.approx(0.1)}
    # no alternatives reported: the chosen token against its complement
    d = verdict_distribution_from_logprobs([T("unsafe", lp(0.8)), T("\n", 0.0), T("S2", 0.0)], FORMATS["llamaguard"])
    assert d == {"unsafe": pytest.approx(0.8), "safe": pytest.approx(0.2)}
    assert verdict_distribution_from_logprobs([T("Hello", 0.0)], FORMATS["mindguard"]) is None
    # a reasoning model's draft inside <think> is skipped
    d = verdict_distribution_from_logprobs([T("<think>Safety: Unsafe", 0.0), T("</think>", 0.0), T("Safety:", 0.0),
                                            T(" Safe", lp(0.6), {" Safe": lp(0.6), " Unsafe": lp(0.4)})],
                                           FORMATS["mindguard"])
    assert d == {"safe": pytest.approx(0.6), "unsafe": pytest.approx(0.4)}


def test_transcript_and_classification_prompt() -> None:
    msgs = [Message("user", "hi there"), Message("assistant", "hello,\n how are you?"), Message("user", "bad"),
            Message("assistant", "tell me more"), Message("user", "later stuff")]
    t = render_transcript(msgs, 2)
    assert "[2] Assistant: hello, how are you?" in t
    assert "[3] User: bad  <<< TARGET TURN" in t
    assert t.index("context only") < t.index("[4] Assistant")
    chat = classification_messages(msgs, 2, with_rationale=True)
    assert chat[0]["role"] == "system" and "Risk persists" in chat[0]["content"] and "Rationale:" in chat[0]["content"]
    assert "TARGET TURN [3]" in chat[1]["content"] and "Later messages" in chat[1]["content"]
    assert "Later messages" not in classification_messages(msgs)[1]["content"]
    with pytest.raises(ValueError, match="not a user turn"):
        classification_messages(msgs, 1)


def test_llama_guard_template_lists_our_categories() -> None:
    # rendered as transformers and vLLM render chat templates
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(llama_guard_template()).render(
        messages=[{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        bos_token="<BOS>")
    assert text.startswith("<BOS><|start_header_id|>user")
    assert "Risk persists" in text and "<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Unsafe — self-harm risk." in text
    assert "S1: Unsafe — self-harm risk." in text and "S2: Unsafe — harm to others." in text
    assert "User: a\n\nAgent: b\n\nUser: c\n\n<END CONVERSATION>" in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
