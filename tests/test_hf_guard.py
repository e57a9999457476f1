"""The `hf` guard on a tiny causal LM built here (word-level tokenizer with a chat template, 2-layer
Llama): chat template over the whole conversation, verdict scoring against a hand computation,
padding-independent batching, truncation, category mapping, the Llama Guard and policy formats,
and an end-to-end evaluation after teaching the tiny model the gold verdicts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mindguard.cli import main
from mindguard.conversation import Message
from mindguard.errors import MindGuardError
from mindguard.guards import load_guard
from mindguard.guards.hf import HFGuard
from mindguard.taxonomy import HARM_OTHERS, SAFE, SELF_HARM

from .conftest import make_conversations
from .tiny_causal_lm import build_tiny_lm, fit_verdicts


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tinylm") / "model", make_conversations())


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> dict[str, Path]:
    """Copies of the tiny LM taught the gold verdicts in the Qwen3Guard and Llama Guard formats."""
    out = {}
    for fam, steps in (("qwen3guard", 50), ("llamaguard", 80)):
        path = tmp_path_factory.mktemp(fam) / "model"
        shutil.copytree(tiny_lm, path)
        guard = HFGuard(str(path), family=fam)
        loss = fit_verdicts(path, make_conversations(), fam, guard.render_prompt, steps=steps)
        assert loss < 0.3, f"the tiny {fam} model did not learn its verdicts (loss {loss:.3f})"
        out[fam] = path
    return out


def hand_p_unsafe(guard: HFGuard, messages, controversial: bool = True) -> float:
    tok, model = guard.tokenizer, guard.model
    ids = torch.tensor([tok(guard.render_prompt(messages), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1], -1)
    p = {w: float(probs[tok.convert_tokens_to_ids(w)]) for w in ("Safe", "Unsafe", "Controversial")}
    unsafe = p["Unsafe"] + (p["Controversial"] if controversial else 0.0)
    return unsafe / sum(p.values())


def test_chat_template_sees_the_whole_conversation(tiny_lm: Path) -> None:
    guard = load_guard(f"hf:{tiny_lm},family=qwen3guard")
    conv = make_conversations()[0]
    prompt = guard.render_prompt(conv.prefix(4))
    assert prompt.startswith("<|im_start|>user\nthis job is literally killing me<|im_end|>")
    positions = [prompt.index(m.content) for m in conv.prefix(4)]
    assert positions == sorted(positions)
    assert prompt.endswith("<|im_start|>assistant\nSafety:")
    assert guard.name == "hf:model"


def test_score_is_the_unsafe_verdict_probability(tiny_lm: Path) -> None:
    conv = make_conversations()[0]
    strict = HFGuard(str(tiny_lm), family="qwen3guard")
    loose = HFGuard(str(tiny_lm), family="qwen3guard", controversial="safe")
    for i in conv.user_turn_indices():
        ctx = conv.prefix(i)
        assert strict.assess(ctx).p_unsafe == pytest.approx(hand_p_unsafe(strict, ctx), abs=1e-5)
        assert loose.assess(ctx).p_unsafe == pytest.approx(hand_p_unsafe(loose, ctx, controversial=False), abs=1e-5)


def test_batching_with_padding_matches_one_by_one(tiny_lm: Path) -> None:
    convs = make_conversations()
    contexts = [c.prefix(i) for c in convs for i in c.user_turn_indices()]  # lengths differ: left padding
    batched = HFGuard(str(tiny_lm), family="qwen3guard", batch_size=8, threshold=0.0).assess_batch(contexts)
    single = HFGuard(str(tiny_lm), family="qwen3guard", batch_size=1, threshold=0.0)
    for ctx, a in zip(contexts, batched):
        b = single.assess(ctx)
        assert a.p_unsafe == pytest.approx(b.p_unsafe, abs=1e-5)
        assert a.extra["categories"] == b.extra["categories"]  # threshold 0: every turn names categories
    many = HFGuard(str(tiny_lm), family="qwen3guard", batch_size=3).assess_many(convs, [c.user_turn_indices() for c in convs])
    assert [len(x) for x in many] == [len(c.user_turns()) for c in convs]
    assert [a.p_unsafe for x in many for a in x] == pytest.approx([a.p_unsafe for a in batched], abs=1e-5)


def test_shared_first_token_falls_back_to_sequence_scoring(tiny_lm: Path) -> None:
    guard = HFGuard(str(tiny_lm), family="qwen3guard")
    tok = guard.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("Safe", "Unsafe", "Controversial", ",")}
    # pretend each verdict word is two tokens starting with the same one: one forward per word
    guard._verdict_ids = {"safe": [ids[","], ids["Safe"]], "unsafe": [ids[","], ids["Unsafe"]],
                          "controversial": [ids[","], ids["Controversial"]]}
    ctx = make_conversations()[1].prefix(2)
    prompt_ids = tok(guard.render_prompt(ctx), add_special_tokens=False)["input_ids"]
    seq_p = {}
    for v, cand in guard._verdict_ids.items():
        with torch.no_grad():
            logp = torch.log_softmax(guard.model(input_ids=torch.tensor([prompt_ids + cand])).logits[0], -1)
        n = len(prompt_ids)
        seq_p[v] = float((logp[n - 1, cand[0]] + logp[n, cand[1]]).exp())
    dist = guard.verdict_distributions([guard.render_prompt(ctx)])[0]
    assert dist == pytest.approx(seq_p, rel=1e-4)


def test_long_context_drops_oldest_messages_but_keeps_the_target(tiny_lm: Path) -> None:
    conv = make_conversations()[0]
    full = HFGuard(str(tiny_lm), family="qwen3guard").render_prompt(conv.messages)
    short = HFGuard(str(tiny_lm), family="qwen3guard", max_context_tokens=40)
    prompt = short.render_prompt(conv.messages)
    assert len(short._encode(prompt)) <= 40 < len(short._encode(full))
    assert prompt.startswith("<|im_start|>user\n") and conv.messages[-1].content in prompt
    assert conv.messages[0].content not in prompt


def test_policy_family_prompts_with_our_taxonomy(tiny_lm: Path) -> None:
    guard = HFGuard(str(tiny_lm), family="mindguard")
    prompt = guard.render_prompt(make_conversations()[1].messages)
    assert prompt.startswith("<|im_start|>system\n# MindGuard clinical risk taxonomy")
    assert "[5] User: already bought the bat  <<< TARGET TURN" in prompt
    assert prompt.endswith("<|im_start|>assistant\nSafety:")
    a = guard.assess(make_conversations()[1].messages)
    assert set(a.extra["verdict"]) == {"safe", "unsafe"}  # our format has no 'Controversial'


def test_errors_are_user_facing(tiny_lm: Path, tmp_path: Path) -> None:
    with pytest.raises(MindGuardError, match="cannot load the model"):
        HFGuard(str(tmp_path / "nowhere"))
    with pytest.raises(MindGuardError, match="unknown guard family"):
        load_guard(f"hf:{tiny_lm},family=gpt")
    with pytest.raises(MindGuardError, match="unknown dtype"):
        HFGuard(str(tiny_lm), dtype="int3")
    with pytest.raises(Exception, match="must end with a user turn"):
        HFGuard(str(tiny_lm)).assess([Message("user", "hi"), Message("assistant", "hello")])


def test_taught_qwen3guard_model_labels_every_turn(taught: dict[str, Path]) -> None:
    guard = load_guard(f"hf:model={taught['qwen3guard']},family=qwen3guard")
    for conv in make_conversations():
        for m, a in zip(conv.user_turns(), guard.assess_conversation(conv)):
            assert a.label == m.label, (conv.id, m.content)
            assert (a.p_unsafe >= 0.5) == (m.label != SAFE)
            assert ("categories" in a.extra) == a.flagged
    a = guard.assess(make_conversations()[1].messages)
    assert a.extra["categories"] == "Violent" and a.probabilities[HARM_OTHERS] == pytest.approx(a.p_unsafe)


def test_taught_llama_guard_model_with_our_categories(taught: dict[str, Path]) -> None:
    guard = HFGuard(str(taught["llamaguard"]), family="llamaguard")
    prompt = guard.render_prompt(make_conversations()[0].prefix(4))
    assert "S1: Unsafe — self-harm risk." in prompt and "\n\nUser: honestly some nights" in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert set(guard.assess(make_conversations()[0].prefix(0)).extra["verdict"]) == {"safe", "unsafe"}
    for conv in make_conversations():
        assert [a.label for a in guard.assess_conversation(conv)] == [m.label for m in conv.user_turns()]
    assert guard.assess(make_conversations()[0].messages).extra["categories"] == "S1"
    assert guard.assess(make_conversations()[0].messages).label == SELF_HARM


def test_eval_command_runs_the_hf_guard(taught: dict[str, Path], native_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "--data", str(native_file), "--guard", f"hf:{taught['qwen3guard']},family=qwen3guard",
               "--guard", "keyword", "--out", str(tmp_path / "rep"), "--quiet", "--bootstrap", "0"])
    assert rc == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("hf:model"))
    assert "AUROC 1.0000" in line
