"""LLM-driven two-agent generation end to end against the fake OpenAI server: patient, clinician
and judge models over real HTTP, majority-vote labels with their spread, token totals, resuming,
a run killed with SIGKILL and rerun, torn-line recovery, and the error policy."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mindguard.conversation import Conversation
from mindguard.datasets import load_conversations
from mindguard.errors import MindGuardError
from mindguard.llm.fake_server import FakeOpenAIServer
from mindguard.llm.openai_compat import OpenAICompatClient
from mindguard.synth import Persona, Scenario, Stage
from mindguard.synth.llm import (
    CLINICIAN_PROMPT,
    END_MARK,
    LLMPatient,
    clean_patient_text,
    generate_llm,
    patient_system_prompt,
    plan_turns,
)
from mindguard.taxonomy import SAFE, SELF_HARM

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = [
    Scenario("escalation.work.p1", "escalation", Persona("Dana", 34, "night-shift nurse", "Irish", ("lowercase",)),
             "work_stress", "escalation",
             (Stage("opening", SAFE, 1, 1), Stage("problem", SAFE, 1, 2),
              Stage("passive_ideation", SELF_HARM, 1, 2, "you wish you could go to sleep and not wake up"))),
    Scenario("venting.anger.p2", "hard_negative", Persona("Sam", 41, "warehouse worker", style=("terse",)),
             "anger", "anger_venting_no_intent",
             (Stage("opening", SAFE, 1, 1), Stage("anger_venting", SAFE, 1, 2, "vent anger; no plan, no intent"),
              Stage("closing", SAFE, 0, 1))),
]
LINES = {
    "opening": "hey. rough week",
    "problem": "work is so tired all the time honestly",  # borderline for the judge: votes split
    "passive ideation": "i just want to go to sleep and not wake up",
    "anger venting": "my boss is a joke, i could scream",
    "closing": "ok thanks, that helped",
}


def patient_said(req: dict) -> str:
    system = req["messages"][0]["content"]
    m = re.search(r"Now \(your message (\d+) of about \d+\): (.+?) — ", system)
    assert m, "the patient prompt names the current message and stage"
    text = f"{LINES[m.group(2)]} ({m.group(1)})"
    return text + (f" {END_MARK}" if "This is your last message" in system else "")


def judge_said(req: dict) -> str:
    target = re.search(r"\] User: (.*)  <<< TARGET TURN", req["messages"][-1]["content"]).group(1)
    if "not wake up" in target:
        unsafe = True
    elif "so tired" in target:  # borderline: one sample in three says unsafe
        unsafe = req["seed"] % 3 == 0
    else:
        unsafe = False
    label = SELF_HARM if unsafe else SAFE
    return (f"Safety: {'Unsafe' if unsafe else 'Safe'}\nCategories: {label if unsafe else 'None'}\n"
            f"Rationale: about '{target[:12]}'")


def three_models(req: dict) -> str:
    if req["model"] == "patient-m":
        return patient_said(req)
    if req["model"] == "clinician-m":
        return "That sounds heavy. What has been weighing on you most?"
    return judge_said(req)


MODELS = ("patient-m", "clinician-m", "judge-m")


def clients(url: str) -> tuple[OpenAICompatClient, ...]:
    return tuple(OpenAICompatClient(m, base_url=url, backoff=0.001, max_backoff=0.01, max_retries=1) for m in MODELS)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_generate_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "synth.jsonl"
    with FakeOpenAIServer(three_models, models=MODELS) as s:
        summary = generate_llm(SCENARIOS, 4, out, *clients(s.url), k=3, concurrency=2, seed=7, progress=False,
                               prices={"judge": (1.0, 2.0)})
        requests = list(s.requests)
    assert (summary["requested"], summary["written"], summary["failed"], summary["already_present"]) == (4, 4, 0, 0)
    convs = load_conversations(out)
    assert sorted(c.id for c in convs) == [f"llm-7-{i:05d}" for i in range(4)]
    for c in convs:
        roles = [m.role for m in c.messages]
        assert roles[0] == roles[-1] == "user" and all(a != b for a, b in zip(roles, roles[1:]))
        users = c.user_turns()
        assert len(users) == len(c.meta["stages"]) == len(c.meta["intended_labels"])
        assert c.meta["scenario"] == SCENARIOS[c.meta["index"] % 2].id and c.meta["generator"] == "llm-v1"
        assert c.meta["models"] == {"patient": "patient-m", "clinician": "clinician-m", "judge": "judge-m"}
        for m in users:
            assert len(m.votes) == 3 and m.rationale.startswith("about")
            assert m.label == (SELF_HARM if "not wake up" in m.content else SAFE)
            if "so tired" in m.content:
                assert sorted(m.votes.values()) == [SAFE, SAFE, SELF_HARM]  # the spread is kept
    escal = [c for c in convs if c.meta["scenario"].startswith("escalation")]
    assert any(m.label == SELF_HARM for c in escal for m in c.user_turns())
    # the patient model plays the assistant of its own chat: the companion's words come as "user"
    later = next(r for r in requests if r["model"] == "patient-m" and len(r["messages"]) > 3)
    assert later["messages"][2]["role"] == "user" and later["messages"][2]["content"].startswith("That sounds heavy")
    assert "Dana, 34, night-shift nurse" in later["messages"][0]["content"] or "Sam, 41" in later["messages"][0]["content"]
    clin = next(r for r in requests if r["model"] == "clinician-m")
    assert clin["messages"][0]["content"] == CLINICIAN_PROMPT and clin["messages"][-1]["role"] == "user"
    # the judge sees the whole conversation: the first turn's prompt already holds later turns
    first_turn_judging = [r for r in requests if r["model"] == "judge-m" and "TARGET TURN [1]" in r["messages"][-1]["content"]]
    assert first_turn_judging and all("context only" in r["messages"][-1]["content"] for r in first_turn_judging)
    assert {r["temperature"] for r in requests if r["model"] == "judge-m"} == {0.7}
    n_user = sum(len(c.user_turns()) for c in convs)
    assert len([r for r in requests if r["model"] == "judge-m"]) == 3 * n_user
    tok = summary["tokens"]
    assert tok["patient"]["completion_tokens"] > 0 and tok["clinician"]["prompt_tokens"] > 0
    assert tok["total_tokens"] == sum(v["prompt_tokens"] + v["completion_tokens"] for k, v in tok.items()
                                      if isinstance(v, dict))
    assert tok["cost_usd"] == pytest.approx((tok["judge"]["prompt_tokens"] + 2 * tok["judge"]["completion_tokens"]) / 1e6)


def test_rerun_resumes_and_is_reproducible(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with FakeOpenAIServer(three_models, models=MODELS) as s:
        generate_llm(SCENARIOS, 3, a, *clients(s.url), k=1, concurrency=3, seed=1, progress=False)
        before = a.read_bytes()
        again = generate_llm(SCENARIOS, 3, a, *clients(s.url), k=1, concurrency=3, seed=1, progress=False)
        assert (again["written"], again["already_present"]) == (0, 3) and a.read_bytes() == before
        n_requests = len(s.requests)
        more = generate_llm(SCENARIOS, 5, a, *clients(s.url), k=1, concurrency=1, seed=1, progress=False)
        assert (more["written"], more["already_present"]) == (2, 3) and len(s.requests) > n_requests
        generate_llm(SCENARIOS, 5, b, *clients(s.url), k=1, concurrency=1, seed=1, progress=False)
    by_id = {d["id"]: d for d in read_lines(b)}
    assert {d["id"]: d for d in read_lines(a)} == by_id  # conversation i depends only on (seed, i)


def test_torn_last_line_is_cut_and_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    with FakeOpenAIServer(three_models, models=MODELS) as s:
        generate_llm(SCENARIOS, 2, out, *clients(s.url), k=1, concurrency=1, progress=False)
        with open(out, "ab") as f:
            f.write(b'{"id": "llm-0-00002", "messages": [{"role": "us')  # what a crash mid-write leaves
        summary = generate_llm(SCENARIOS, 3, out, *clients(s.url), k=1, concurrency=1, progress=False)
    ids = [d["id"] for d in read_lines(out)]
    assert sorted(ids) == ["llm-0-00000", "llm-0-00001", "llm-0-00002"] and summary["written"] == 1


CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.test_synth_llm import SCENARIOS, clients
from mindguard.synth.llm import generate_llm
generate_llm(SCENARIOS, {n}, {out!r}, *clients({url!r}), k=3, concurrency=2, seed=3, progress=False)
"""


def kill_after_lines(child: subprocess.Popen, out: Path, lines: int) -> None:
    """SIGKILL a running synthesis as soon as `out` holds `lines` complete conversations."""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.02)
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()[-500:]}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
        child.stderr.close()


def test_killed_run_then_rerun_gives_exactly_n(tmp_path: Path) -> None:
    out, n = tmp_path / "killed.jsonl", 8
    with FakeOpenAIServer(three_models, models=MODELS, delay=0.03) as s:
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), n=n, out=str(out), url=s.url)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kill_after_lines(child, out, 2)
        assert child.returncode == -signal.SIGKILL
        first = out.read_bytes().count(b"\n")
        assert 2 <= first < n
        s.delay = 0.0
        summary = generate_llm(SCENARIOS, n, out, *clients(s.url), k=3, concurrency=2, seed=3, progress=False)
    ids = [d["id"] for d in read_lines(out)]
    assert len(ids) == n and len(set(ids)) == n and summary["written"] == n - summary["already_present"]
    assert summary["already_present"] >= first
    assert all(len(m["votes"]) == 3 for d in read_lines(out) for m in d["messages"] if m["role"] == "user")


def any_scenario_models(req: dict) -> str:
    """Patient, clinician and judge for scenarios from the packaged library (any stage names)."""
    if req["model"] == "patient-m":
        m = re.search(r"Now \(your message (\d+) of about \d+\): (.+?) — ", req["messages"][0]["content"])
        return f"message {m.group(1)} while {m.group(2)}"
    if req["model"] == "clinician-m":
        return "I hear you. Tell me more?"
    target = re.search(r"\] User: (.*)  <<< TARGET TURN", req["messages"][-1]["content"]).group(1)
    unsafe = "ideation" in target or "plan" in target
    return f"Safety: {'Unsafe' if unsafe else 'Safe'}\nCategories: {SELF_HARM if unsafe else 'None'}\nRationale: r"


def test_mindguard_synth_killed_and_rerun(tmp_path: Path) -> None:
    out, n = tmp_path / "cli.jsonl", 6
    with FakeOpenAIServer(any_scenario_models, models=MODELS, delay=0.03) as s:
        cmd = [sys.executable, "-m", "mindguard", "synth", "--patient-model", "patient-m", "--clinician-model",
               "clinician-m", "--judge-model", "judge-m", "--base-url", s.url, "--n", str(n), "--out", str(out),
               "--judge-samples", "2", "--concurrency", "2", "--max-user-turns", "4", "--seed", "5", "--quiet"]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kill_after_lines(child, out, 1)
        first = out.read_bytes().count(b"\n")
        assert 1 <= first < n
        s.delay = 0.0
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    summary = json.loads(done.stdout)
    assert summary["already_present"] >= first and summary["written"] == n - summary["already_present"]
    convs = load_conversations(out)
    assert sorted(c.id for c in convs) == [f"llm-5-{i:05d}" for i in range(n)]
    assert all(len(c.user_turns()) <= 4 and all(len(m.votes) == 2 for m in c.user_turns()) for c in convs)


def test_fatal_errors_stop_the_run(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    with FakeOpenAIServer(three_models, models=("patient-m", "clinician-m")) as s:
        with pytest.raises(MindGuardError, match="model 'judge-m' not found"):
            generate_llm(SCENARIOS, 3, out, *clients(s.url), k=1, progress=False)
    assert not out.exists() or out.read_text() == ""


def test_failed_conversations_are_skipped_then_retried(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"

    def bad_judge_for_sam(req: dict) -> str:
        if req["model"] == "judge-m" and "my boss is a joke" in req["messages"][-1]["content"]:
            return "I'd rather not say."
        return three_models(req)

    with FakeOpenAIServer(bad_judge_for_sam, models=MODELS) as s:
        # the judge answers out of format on Sam's venting conversations (indices 1 and 3)
        summary = generate_llm(SCENARIOS, 4, out, *clients(s.url), k=1, concurrency=1, progress=False)
        assert (summary["written"], summary["failed"]) == (2, 2)
        assert "expected format" in summary["errors"][0]
        s.responder = three_models
        summary = generate_llm(SCENARIOS, 4, out, *clients(s.url), k=1, concurrency=1, progress=False)
    assert summary["written"] == 2 and len(read_lines(out)) == 4


def test_too_many_failures_in_a_row_abort(tmp_path: Path) -> None:
    with FakeOpenAIServer(lambda req: "" if req["model"] == "patient-m" else "ok", models=MODELS) as s:
        with pytest.raises(MindGuardError, match="3 conversations failed in a row; last: .*empty message"):
            generate_llm(SCENARIOS, 6, tmp_path / "x.jsonl", *clients(s.url), k=1, concurrency=1, progress=False,
                         max_consecutive_failures=3)


def test_a_second_run_on_the_same_file_is_refused(tmp_path: Path) -> None:
    from mindguard.datasets._jsonl import LockedAppendLog as _AppendLog

    out = tmp_path / "x.jsonl"
    holder = _AppendLog(out)
    try:
        with pytest.raises(MindGuardError, match="another run is writing"):
            generate_llm(SCENARIOS, 1, out, *clients("http://127.0.0.1:9/v1"), progress=False)
    finally:
        holder.close()


def test_not_our_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    out.write_text("hello\n")
    with pytest.raises(MindGuardError, match="x.jsonl:1: not a conversation line"):
        generate_llm(SCENARIOS, 1, out, *clients("http://127.0.0.1:9/v1"), progress=False)


def test_plan_budget_and_patient_prompt() -> None:
    sc = SCENARIOS[0]
    plan = plan_turns(sc, random.Random(0), 40)
    assert [st.name for st in plan][0] == "opening" and plan[-1].name == "passive_ideation"
    capped = plan_turns(sc, random.Random(0), 2)
    assert [st.name for st in capped] == ["opening", "passive_ideation"]  # the budget keeps the last stage
    text = patient_system_prompt(sc, plan, len(plan) - 1)
    assert "Dana, 34, night-shift nurse. Background: Irish." in text and "all lowercase" in text
    assert "you wish you could go to sleep and not wake up" in text and "current risk to yourself" in text
    assert END_MARK in text and END_MARK not in patient_system_prompt(sc, plan, 0)


def test_patient_cleans_and_ends_only_in_the_final_stage() -> None:
    assert clean_patient_text('Dana: "hi there [END]"', "Dana") == ("hi there", True)
    assert clean_patient_text("Patient: ok <think>hmm</think> fine", "Dana") == ("ok fine", False)
    assert clean_patient_text("Note: fine", "Dana") == ("Note: fine", False)
    from mindguard.llm import ScriptedChatClient

    sc = SCENARIOS[0]
    plan = [sc.stages[0], sc.stages[1], sc.stages[2], sc.stages[2]]
    patient = LLMPatient(ScriptedChatClient(lambda m: f"bye {END_MARK}"), plan)
    from mindguard.conversation import Message

    hist: list[Message] = []
    assert not patient.reply(hist, sc, random.Random(0)).done  # [END] too early: ignored
    hist = [Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d")]
    turn = patient.reply(hist, sc, random.Random(0))
    assert turn.done and turn.stage == "passive_ideation" and turn.label is None


def test_conversations_round_trip_through_the_dataset_reader(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    with FakeOpenAIServer(three_models, models=MODELS) as s:
        generate_llm(SCENARIOS[:1], 1, out, *clients(s.url), k=3, progress=False)
    (conv,) = load_conversations(out)
    assert isinstance(conv, Conversation) and all(m.label for m in conv.user_turns())
