"""The SFT recipe for generative guards: the example builder (verdict text both ways, prompts identical to
what the `hf` guard scores, context truncation that never touches the target turn, class balance) and
`mindguard train-llm` on a tiny randomly initialised causal LM built here (full fine-tuning that learns
the verdicts, a LoRA adapter loaded through `hf`, checkpoints resumed, packing only where it is safe,
the missing-extra message)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindguard.cli import main
from mindguard.conversation import Conversation
from mindguard.datasets import write_native
from mindguard.errors import DataError, MindGuardError
from mindguard.guards import load_guard
from mindguard.guards.hf import SFT_META, HFGuard
from mindguard.guards.verdict import FORMATS
from mindguard.taxonomy import HARM_OTHERS, LABELS, SAFE, SELF_HARM, is_unsafe
from mindguard.train.sft import (
    BuildStats,
    ExampleBuilder,
    Sampling,
    TurnRef,
    balance,
    label_of_target,
    labelled_turns,
    target_text,
)

from .conftest import make_conversations
from .tiny_causal_lm import build_tiny_lm


@pytest.fixture(autouse=True)
def one_thread() -> object:
    # tiny matrices: extra threads only add overhead on the shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama and word-level ChatML tokenizer (tests/tiny_causal_lm.py)."""
    return build_tiny_lm(tmp_path_factory.mktemp("sft") / "base", make_conversations())


@pytest.fixture(scope="module")
def tokenizer(base: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("sftdata") / "conv.jsonl"
    write_native(p, make_conversations())
    return p


def long_conversation(n_user: int = 12) -> Conversation:
    """Many turns made of the conftest texts (all in the tiny vocabulary), each message unique, the
    last user turn unsafe."""
    users = [m.content for c in make_conversations() for m in c.user_turns()]
    replies = [m.content for c in make_conversations() for m in c.messages if m.role == "assistant"]
    msgs = []
    for k in range(n_user):
        msgs.append({"role": "user", "content": f"[{k}] {users[k % len(users)]}",
                     "label": SELF_HARM if k == n_user - 1 else SAFE})
        msgs.append({"role": "assistant", "content": f"[{k}] {replies[k % len(replies)]}"})
    return Conversation.from_dicts("long", msgs[:-1])


# -- labels <-> verdict text ----------------------------------------------------------------------
def test_labels_map_to_verdict_text_both_ways(tokenizer: object) -> None:
    assert target_text(SAFE, "mindguard") == "Safety: Safe\nCategories: None"
    assert target_text(SELF_HARM, "mindguard") == "Safety: Unsafe\nCategories: unsafe_self_harm_risk"
    assert target_text(SELF_HARM, "qwen3guard") == "Safety: Unsafe\nCategories: Suicide & Self-Harm"
    assert target_text(HARM_OTHERS, "qwen3guard") == "Safety: Unsafe\nCategories: Violent"
    assert target_text(HARM_OTHERS, "llamaguard") == "unsafe\nS2"
    for fam in FORMATS:
        builder = ExampleBuilder(tokenizer, fam)
        texts = set()
        for label in LABELS:
            text = target_text(label, fam)
            texts.add(text)
            assert label_of_target(text, fam) == label
            # what the model is trained to write after the prompt's verdict prefix reads back the same
            completion = builder.completion(label)
            assert completion.endswith("<|im_end|>")
            assert label_of_target(FORMATS[fam].prefix + completion.removesuffix("<|im_end|>"), fam) == label
        assert len(texts) == len(LABELS)
    with pytest.raises(ValueError, match="no qwen3guard verdict"):
        label_of_target("I think this is fine", "qwen3guard")


def test_examples_are_exactly_what_the_hf_guard_scores(base: Path, tokenizer: object) -> None:
    convs = make_conversations()
    for fam in FORMATS:
        guard = HFGuard(str(base), family=fam)
        builder = ExampleBuilder(tokenizer, fam)
        examples = list(builder.iter_examples(convs, labelled_turns(convs)))
        assert len(examples) == sum(len(c.labelled_turns()) for c in convs)
        for ex in examples:
            conv = next(c for c in convs if c.id == ex.conversation_id)
            assert ex.label == conv.messages[ex.message_index].label
            assert ex.prompt == guard.render_prompt(conv.prefix(ex.message_index))
            assert ex.prompt_ids == guard._encode(ex.prompt)
            # the first target token is the verdict word the guard reads p(unsafe) from
            verdict = "unsafe" if is_unsafe(ex.label) else "safe"
            assert ex.completion_ids[0] == guard._verdict_ids[verdict][0]
    mg = ExampleBuilder(tokenizer, "mindguard", policy="CUSTOM POLICY: flag current risk only.")
    ex = next(mg.iter_examples(convs, labelled_turns(convs)[:1]))
    assert ex.prompt.startswith("<|im_start|>system\nCUSTOM POLICY: flag current risk only.")


# -- truncation ------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_length=st.integers(min_value=12, max_value=400), family=st.sampled_from(["qwen3guard", "mindguard"]))
def test_the_target_turn_is_never_truncated(tokenizer: object, max_length: int, family: str) -> None:
    conv = long_conversation()
    policy = "Flag current risk." if family == "mindguard" else None  # a short policy: small budgets still fit some
    builder = ExampleBuilder(tokenizer, family, policy=policy, max_length=max_length)
    stats = BuildStats()
    refs = labelled_turns([conv])
    examples = {ex.message_index: ex for ex in builder.iter_examples([conv], refs, stats)}
    for r in refs:
        target = conv.messages[r.message_index]
        ex = examples.get(r.message_index)
        alone, _ = builder.prompter.render([target], 10**9)
        fits_alone = len(builder.prompter.encode(alone)) + len(builder.prompter.encode(builder.completion(r.label))) <= max_length
        if ex is None:  # left out only when the target turn alone cannot fit
            assert not fits_alone
            continue
        assert ex.n_tokens <= max_length
        assert target.content in ex.prompt and ex.prompt.endswith(FORMATS[family].prefix)
        assert ex.completion == builder.completion(r.label)
        kept = conv.messages[ex.first_message: r.message_index + 1]
        assert kept[0].role == "user"  # contexts open on a user turn
        for m in kept:
            assert m.content in ex.prompt
        for m in conv.messages[: ex.first_message]:
            assert m.content not in ex.prompt  # the oldest messages went first
    assert stats.n_examples == len(examples)
    assert sum(stats.too_long.values()) == len(refs) - len(examples)


def test_long_context_keeps_the_newest_messages(tokenizer: object) -> None:
    conv = long_conversation(20)
    full = ExampleBuilder(tokenizer, "qwen3guard").build(conv, conv.labelled_turns()[-1])
    short = ExampleBuilder(tokenizer, "qwen3guard", max_length=80).build(conv, conv.labelled_turns()[-1])
    assert full is not None and short is not None
    assert full.first_message == 0 and short.first_message > 0
    assert short.n_tokens <= 80 < full.n_tokens
    assert full.prompt.endswith(short.prompt)  # ChatML: the same newest messages, verbatim


# -- class balance ---------------------------------------------------------------------------------
def refs_for(n_safe: int, n_self: int, n_others: int, n_hard: int = 0) -> list[TurnRef]:
    labels = [SAFE] * n_safe + [SELF_HARM] * n_self + [HARM_OTHERS] * n_others
    return [TurnRef(k // 10, k % 10 * 2, lab, hard_negative=(lab == SAFE and k < n_hard)) for k, lab in enumerate(labels)]


def test_downsampling_reaches_the_unsafe_share_and_keeps_hard_negatives() -> None:
    refs = refs_for(n_safe=300, n_self=40, n_others=20, n_hard=25)
    out = balance(refs, Sampling(unsafe_share=0.25, seed=1))
    count = Counter(r.label for r in out)
    assert count[SELF_HARM] == 40 and count[HARM_OTHERS] == 20  # the minority class is untouched
    assert count[SAFE] == 180  # 60 unsafe at a 25 % share
    assert len(set(out)) == len(out) and set(out) <= set(refs)  # nothing repeated, nothing invented
    assert sum(r.hard_negative for r in out) == 25  # every hard negative survived
    assert out == sorted(out, key=lambda r: (r.conversation, r.message_index))
    assert balance(refs, Sampling(unsafe_share=0.25, seed=1)) == out
    assert balance(refs, Sampling(unsafe_share=0.25, seed=2)) != out
    plain = balance(refs, Sampling(unsafe_share=0.25, seed=1, keep_hard_negatives=False))
    assert sum(r.hard_negative for r in plain) < 25
    # an unsafe majority is cut down instead
    flipped = balance(refs_for(n_safe=30, n_self=60, n_others=60), Sampling(unsafe_share=0.5))
    assert Counter(is_unsafe(r.label) for r in flipped) == {False: 30, True: 30}
    assert balance(refs, Sampling()) == refs  # no share asked: the data as it is


def test_upsampling_repeats_the_minority_and_drops_nothing() -> None:
    refs = refs_for(n_safe=200, n_self=30, n_others=20)
    out = balance(refs, Sampling(unsafe_share=0.4, method="upsample", seed=3))
    count = Counter(r.label for r in out)
    assert count[SAFE] == 200
    assert count[SELF_HARM] + count[HARM_OTHERS] == round(200 * 0.4 / 0.6)
    copies = Counter(out)
    assert set(copies) == set(refs)
    assert {copies[r] for r in refs if is_unsafe(r.label)} <= {2, 3}  # whole copies, then a random remainder


def test_balance_errors() -> None:
    with pytest.raises(MindGuardError, match="between 0 and 1"):
        Sampling(unsafe_share=1.0)
    with pytest.raises(MindGuardError, match="unknown sampling method"):
        Sampling(unsafe_share=0.3, method="smote")
    with pytest.raises(DataError, match="both safe and unsafe"):
        balance(refs_for(10, 0, 0), Sampling(unsafe_share=0.3))


def test_dry_run_writes_balanced_examples(base: Path, data_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "examples.jsonl"
    rc = main(["train-llm", "--base", str(base), "--data", str(data_file), "--out", str(tmp_path / "m"), "--dry-run",
               "--format", "qwen3guard", "--unsafe-share", "0.5", "--write-examples", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "qwen3guard"
    assert summary["train"]["by_label"] == {SAFE: 4, SELF_HARM: 2, HARM_OTHERS: 2}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and {"prompt", "completion", "label"} <= set(rows[0])
    assert all(label_of_target("Safety:" + r["completion"].removesuffix("<|im_end|>"), "qwen3guard") == r["label"]
               for r in rows)
    assert not (tmp_path / "m").exists()  # nothing trained, nothing written


# -- training --------------------------------------------------------------------------------------
def train_args(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train-llm", "--base", str(base), "--data", str(data), "--out", str(out), "--format", "qwen3guard",
            "--batch-size", "10", "--grad-accum", "1", "--warmup-ratio", "0", "--quiet", *extra]


def test_full_finetune_learns_the_verdicts_and_loads_through_hf(base: Path, data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"  # the name says nothing of the format: the training record must
    rc = main(train_args(base, data_file, out, "--method", "full", "--max-steps", "50", "--lr", "5e-3",
                         "--val", str(data_file), "--eval-steps", "25"))
    assert rc == 0
    meta = json.loads((out / SFT_META).read_text())
    assert meta["family"] == "qwen3guard" and meta["method"] == "full" and meta["steps"] == 50
    assert meta["train"]["examples"] == 10 and meta["eval"]["auroc"] == 1.0
    history = [json.loads(line) for line in (out / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [25, 50]
    assert {"eval_loss", "eval_auroc", "eval_fpr_at_tpr_90", "eval_fpr_at_tpr_95"} <= set(history[-1])
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    guard = load_guard(f"hf:{out}")
    assert guard.family == "qwen3guard" and guard.name == "hf:mine"  # type: ignore[attr-defined]
    for conv in make_conversations():
        for m, a in zip(conv.user_turns(), guard.assess_conversation(conv)):
            assert (a.p_unsafe >= 0.5) == is_unsafe(str(m.label)), (conv.id, m.content, a.p_unsafe)


def test_lora_adapter_loads_through_hf(base: Path, data_file: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    assert main(train_args(base, data_file, out, "--max-steps", "6", "--lr", "2e-2", "--lora-r", "4")) == 0
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    conv = make_conversations()[1]
    loaded = load_guard(f"hf:{out}")
    tok = AutoTokenizer.from_pretrained(out)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    expected = HFGuard.from_model(unmerged, tok, "qwen3guard").assess_conversation(conv)
    plain = HFGuard(str(base), family="qwen3guard").assess_conversation(conv)
    got = loaded.assess_conversation(conv)
    assert [a.p_unsafe for a in got] == pytest.approx([a.p_unsafe for a in expected], abs=1e-5)
    assert max(abs(a.p_unsafe - b.p_unsafe) for a, b in zip(got, plain)) > 1e-4  # the adapter took effect


def test_policy_text_travels_with_the_model(base: Path, data_file: Path, tmp_path: Path, tokenizer: object) -> None:
    policy = tmp_path / "policy.md"
    policy.write_text("Flag current risk of harm to self or others; past attempts are safe.")
    out = tmp_path / "policy-model"
    assert main(["train-llm", "--base", str(base), "--data", str(data_file), "--out", str(out), "--format", "mindguard",
                 "--policy-file", str(policy), "--method", "full", "--max-steps", "1", "--batch-size", "2",
                 "--quiet"]) == 0
    guard = load_guard(f"hf:{out}")
    conv = make_conversations()[0]
    ex = ExampleBuilder(tokenizer, "mindguard", policy=policy.read_text()).build(conv, 4)
    assert ex is not None and guard.render_prompt(conv.prefix(4)) == ex.prompt  # type: ignore[attr-defined]
    assert ex.prompt.startswith("<|im_start|>system\nFlag current risk")


def test_resume_continues_from_the_last_checkpoint(base: Path, data_file: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "resumable"
    args = train_args(base, data_file, out, "--method", "full", "--lr", "1e-3", "--eval-steps", "2", "--logging-steps", "2")
    assert main([*args, "--max-steps", "4"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    capsys.readouterr()
    assert main([*args, "--max-steps", "6"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args, "--max-steps", "6", "--lr", "1e-2", "--resume"]) == 2
    assert "settings or data changed (learning_rate)" in capsys.readouterr().err
    assert main([*args, "--max-steps", "6", "--resume"]) == 0
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    # the loss logged before the interruption is part of the resumed run's history
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [2, 4, 6]
    assert json.loads((out / SFT_META).read_text())["steps"] == 6


def test_keep_best_ends_with_the_best_validation_auroc(base: Path, data_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "best"
    args = train_args(base, data_file, out, "--method", "full", "--lr", "5e-3", "--val", str(data_file), "--keep-best")
    assert main([*args, "--eval-steps", "2", "--save-steps", "3", "--max-steps", "6"]) == 2
    assert "multiple of --eval-steps" in capsys.readouterr().err
    assert main([*args, "--eval-steps", "2", "--max-steps", "6"]) == 0
    history = [json.loads(line) for line in (out / "eval_history.jsonl").read_text().splitlines()]
    best = max(h["eval_auroc"] for h in history[:3])  # the evaluations at steps 2, 4, 6
    assert json.loads((out / SFT_META).read_text())["eval"]["auroc"] == pytest.approx(best)
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] is not None


def test_packing_is_used_only_where_examples_stay_apart(base: Path, data_file: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from mindguard.train.sft_trainer import packing_is_safe

    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    assert packing_is_safe(AutoModelForCausalLM.from_pretrained(base), collator)

    class Leaky(LlamaForCausalLM):  # forgets the packed positions: packed examples read each other
        def forward(self, *args, position_ids=None, **kwargs):  # type: ignore[no-untyped-def]
            return super().forward(*args, **kwargs)

    assert not packing_is_safe(Leaky.from_pretrained(base), collator)
    out = tmp_path / "packed"
    assert main(train_args(base, data_file, out, "--method", "full", "--max-steps", "2", "--packing",
                           "--max-length", "512", "--batch-size", "1")) == 0
    assert (out / SFT_META).is_file()


def test_missing_extra_is_named(base: Path, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now raises ImportError
    assert main(train_args(base, data_file, tmp_path / "x", "--max-steps", "1")) == 2
    assert "pip install 'mindguard[train-llm]'" in capsys.readouterr().err
