"""The offline two-agent engine and `mindguard synth`: reproducibility, valid conversations, labels
that follow the trajectories (risk persists until a resolution stage; short answers after a risk
question carry the risk), the material and scenario library as data, and the CLI's errors. The
LLM path of the CLI runs against the real fake OpenAI server on loopback."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mindguard.cli import main
from mindguard.datasets import load_conversations
from mindguard.errors import DataError
from mindguard.synth import Agent
from mindguard.synth.library import load_library
from mindguard.synth.material import Material
from mindguard.synth.offline import check_material, generate_offline, make_offline_agents
from mindguard.synth.style import apply_style
from mindguard.taxonomy import HARM_OTHERS, SAFE, SELF_HARM, is_unsafe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def library():
    return load_library()


@pytest.fixture(scope="module")
def corpus(library):
    """A few hundred conversations, enough to meet every trajectory."""
    return list(generate_offline(library, n=400, seed=11))


def _stage_labels(library, name: str) -> dict[str, set[str]]:
    t = next(t for t in library.trajectories if t.name == name)
    out: dict[str, set[str]] = defaultdict(set)
    for st in t.stages:
        out[st.name].add(st.label)
    return out


# -- reproducibility ----------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files_across_processes(tmp_path):
    """Two separate processes (different hash seeds) write the same bytes for the same --seed."""
    outs = []
    for k, hashseed in enumerate(("1", "987")):
        out = tmp_path / f"run{k}.jsonl"
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        subprocess.run([sys.executable, "-m", "mindguard", "synth", "--offline", "--n", "25", "--seed", "5",
                        "--out", str(out), "--quiet"], check=True, env=env, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert len(outs[0].splitlines()) == 25


def test_different_seed_gives_different_conversations(library):
    a = [c.to_dict() for c in generate_offline(library, n=10, seed=1)]
    b = [c.to_dict() for c in generate_offline(library, n=10, seed=2)]
    assert a != b
    texts_a = {m["content"] for c in a for m in c["messages"]}
    texts_b = {m["content"] for c in b for m in c["messages"]}
    assert len(texts_a & texts_b) < len(texts_a) / 2


def test_conversation_i_depends_only_on_seed_and_index(library):
    """A longer run starts with the shorter run's conversations (what makes the corpus checkable)."""
    short = [c.to_dict() for c in generate_offline(library, n=5, seed=9)]
    long = [c.to_dict() for c in generate_offline(library, n=12, seed=9)]
    assert long[:5] == short


def test_committed_corpus_is_reproducible():
    """data/synthetic.jsonl is exactly `mindguard synth --offline --n 2500 --seed 7` (checked on its head)."""
    path = ROOT / "data" / "synthetic.jsonl"
    if not path.exists():
        pytest.skip("data/synthetic.jsonl has not been generated in this checkout")
    head = path.read_text(encoding="utf-8").splitlines()[:15]
    again = [json.dumps(c.to_dict(), ensure_ascii=False) for c in generate_offline(n=15, seed=7)]
    assert head == again, "regenerate: mindguard synth --offline --n 2500 --seed 7 --out data/synthetic.jsonl"


# -- validity and provenance ----------------------------------------------------------------------
def test_every_conversation_validates_and_carries_provenance(tmp_path, corpus):
    out = tmp_path / "c.jsonl"
    from mindguard.datasets import write_native

    write_native(out, corpus)
    back = load_conversations(out)  # the native reader validates every message
    assert [c.to_dict() for c in back] == [c.to_dict() for c in corpus]
    for c in back:
        roles = [m.role for m in c.messages]
        assert roles[0] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:])), "user and assistant alternate"
        assert all(m.label in (SAFE, SELF_HARM, HARM_OTHERS) for m in c.user_turns())
        assert all(m.label is None for m in c.messages if m.role == "assistant")
        for key in ("source", "family", "scenario", "persona", "trajectory", "style", "generator", "turn_stages"):
            assert key in c.meta, key
        assert c.meta["source"] == "synthetic"
        assert len(c.meta["turn_stages"]) == len(c.user_turns())
        for m in c.user_turns():
            if m.label != SAFE:
                assert m.rationale, "every unsafe turn carries a rationale"
            if m.hard_negative:
                assert m.label == SAFE and m.rationale


def test_corpus_mix_and_lengths(corpus):
    """Roughly the shape the issue asks for: a minority of unsafe turns, about 2:1 self to others,
    many hard negatives, short user turns with many very short ones, companion replies ~40-60 words."""
    users = [m for c in corpus for m in c.user_turns()]
    labels = [m.label for m in users]
    unsafe = sum(is_unsafe(x) for x in labels if x) / len(labels)
    assert 0.12 <= unsafe <= 0.30
    ratio = labels.count(SELF_HARM) / max(labels.count(HARM_OTHERS), 1)
    assert 1.4 <= ratio <= 3.0
    assert sum(any(m.hard_negative for m in c.messages) for c in corpus) >= 0.3 * len(corpus)
    words = [len(m.content.split()) for m in users]
    assert 9 <= statistics.median(words) <= 25
    assert sum(w <= 5 for w in words) >= 0.08 * len(words)
    companion = [len(m.content.split()) for c in corpus for m in c.messages if m.role == "assistant"]
    assert 30 <= statistics.median(companion) <= 60
    assert len({c.meta["trajectory_spec"] for c in corpus}) >= 20


# -- labels follow the trajectories ---------------------------------------------------------------
def test_each_turn_carries_its_stage_label(library, corpus):
    for c in corpus:
        spec = _stage_labels(library, c.meta["trajectory_spec"])
        for m, stage in zip(c.user_turns(), c.meta["turn_stages"]):
            assert m.label in spec[stage], (c.id, stage, m.label, m.content)


def test_retraction_turns_stay_unsafe(corpus):
    seen = 0
    for c in corpus:
        for m, stage in zip(c.user_turns(), c.meta["turn_stages"]):
            if stage == "retraction":
                seen += 1
                assert m.label == SELF_HARM, m.content
    assert seen >= 5


def test_risk_persists_until_resolution_and_turns_after_it_are_safe(corpus):
    resolved_seen = 0
    for c in corpus:
        stages = c.meta["turn_stages"]
        labels = [m.label for m in c.user_turns()]
        first_risk = next((i for i, lab in enumerate(labels) if lab != SAFE), None)
        if first_risk is None:
            continue
        resolution = next((i for i, s in enumerate(stages) if s in ("resolution", "other_resolution")), None)
        end = len(labels) if resolution is None else resolution
        assert all(lab != SAFE for lab in labels[first_risk:end]), (c.id, list(zip(stages, labels)))
        if resolution is not None:
            resolved_seen += 1
            assert all(lab == SAFE for lab in labels[resolution:]), (c.id, list(zip(stages, labels)))
    assert resolved_seen >= 10


def test_short_answers_take_their_label_from_context(corpus):
    """'yeah' / 'idk' after a risk question is unsafe; the same words in ordinary talk are safe."""
    by_text: dict[str, set[str]] = defaultdict(set)
    after_risk_question = []
    for c in corpus:
        msgs = c.messages
        for i, m in enumerate(msgs):
            if m.role != "user" or i == 0:
                continue
            norm = m.content.lower().strip(" .!?😭😔🥲😞💔😩😢🙃😪😣")
            if len(norm.split()) <= 2:
                by_text[norm].add(m.label or "")
            if len(m.content.split()) <= 3 and any(
                    q in msgs[i - 1].content for q in ("ending your life?", "thinking about suicide?", "killing yourself?")):
                after_risk_question.append(m)
    assert after_risk_question
    # a short reply to a suicide question is unsafe unless the context before had no risk at all
    assert sum(m.label == SELF_HARM for m in after_risk_question) >= 0.6 * len(after_risk_question)
    both = [t for t, labs in by_text.items() if SAFE in labs and SELF_HARM in labs]
    assert {"yeah", "idk"} & set(both), "the same short words appear as safe and as unsafe"


def test_hyperbole_clarified_is_safe_and_marked_hard_negative(corpus):
    hn = [(m, s) for c in corpus for m, s in zip(c.user_turns(), c.meta["turn_stages"]) if s == "hyperbole"]
    assert hn and all(m.label == SAFE and m.hard_negative for m, _ in hn)


def test_custom_scenarios_file_drives_the_trajectory(tmp_path, library):
    lib_file = tmp_path / "scen.json"
    lib_file.write_text(json.dumps({"trajectories": [{
        "name": "short_retraction", "family": "escalation", "stages": [
            {"name": "opening", "label": "safe"},
            {"name": "passive_ideation", "label": "self"},
            {"name": "retraction", "label": "self", "min_turns": 2, "max_turns": 2}]}]}))
    out = tmp_path / "o.jsonl"
    assert main(["synth", "--offline", "--n", "6", "--seed", "3", "--out", str(out), "--scenarios", str(lib_file), "--quiet"]) == 0
    convs = load_conversations(out)
    assert len(convs) == 6
    for c in convs:
        assert c.meta["trajectory_spec"] == "short_retraction"
        assert [m.label for m in c.user_turns()] == [SAFE, SELF_HARM, SELF_HARM, SELF_HARM]


# -- agents, material and style -------------------------------------------------------------------
def test_offline_agents_implement_the_agent_protocol(library):
    patient, clinician = make_offline_agents(library)
    assert isinstance(patient, Agent) and patient.role == "user"
    assert isinstance(clinician, Agent) and clinician.role == "assistant"


def test_every_phrase_renders_for_every_kind_of_persona(library):
    """No template names a slot nothing fills, for personas with and without kids, pets, jobs ..."""
    material = Material.load()
    patient, _ = make_offline_agents(library, material)
    rng = random.Random(0)
    seen_tags: set[frozenset[str]] = set()
    for ps in library.personas:
        key = frozenset(ps.has) | {ps.locale}
        if key in seen_tags:
            continue
        seen_tags.add(key)
        scenario = library.scenario(ps, library.problem(ps.problems[0]), library.trajectories[0])
        patient.start(scenario, rng)
        assert patient._slots is not None
        for bank in material.banks.values():
            for phrase in bank.phrases:
                text = material.expand(phrase.text, rng, patient._slots, tags=patient.b.tags)
                assert text and "{" not in text and "[" not in text, (bank.key, phrase.text)


def test_check_material_rejects_a_stage_labelled_against_its_material(library):
    from mindguard.synth._agents import Stage
    from mindguard.synth.library import ScenarioLibrary, TrajectorySpec

    bad = TrajectorySpec("mislabelled", "x", ("x",), (Stage("opening", SAFE), Stage("passive_ideation", SAFE)))
    lib = ScenarioLibrary(library.personas, library.problems, (bad,))
    with pytest.raises(DataError, match="passive_ideation.*labelled safe.*unsafe_self_harm_risk"):
        check_material(lib, Material.load())


def test_material_parser_errors_name_the_line():
    with pytest.raises(DataError, match="x.txt:2: unknown label"):
        Material.from_text("## a\n@label maybe\n", "x.txt")
    with pytest.raises(DataError, match="x.txt:1: text before"):
        Material.from_text("hello\n", "x.txt")
    with pytest.raises(DataError, match="unbalanced"):
        Material.from_text("## a\n[oops\n", "x.txt")


def test_material_template_language():
    m = Material.from_text("## a\n(kid) {@b} [x|y] {slot}\n(!kid) plain\n## b\nfrom b\n")
    rng = random.Random(3)
    assert m.render("a", rng, lambda s: "S", tags=frozenset()) == "plain"
    out = m.render("a", rng, lambda s: "S", tags=frozenset({"kid"}))
    assert out.startswith("from b ") and out.endswith(" S") and out.split()[2] in ("x", "y")


def test_style_transforms():
    rng = random.Random(0)
    assert apply_style("I don't know what to do.", ("lowercase", "no_apostrophes"), rng) == "i dont know what to do"
    assert apply_style("i am so tired. it never stops", ("formal",), random.Random(1)) == "I am so tired. It never stops"
    # typos never hit the words a label turns on
    for s in range(50):
        out = apply_style("I don't want to die but I keep thinking about the pills", ("typos",), random.Random(s))
        assert "die" in out.split() and "pills" in out


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_offline_writes_native_jsonl(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["synth", "--offline", "--n", "8", "--seed", "4", "--out", str(out), "--quiet"]) == 0
    assert "wrote 8 conversations" in capsys.readouterr().err
    assert len(load_conversations(out)) == 8
    assert main(["data", "stats", str(out)]) == 0


@pytest.mark.parametrize("args, message", [
    (["--offline", "--n", "0"], "--n must be at least 1"),
    (["--offline", "--n", "-3"], "--n must be at least 1"),
    (["--offline", "--n", "2", "--scenarios", "MISSING"], "no such scenarios file"),
    (["--n", "2"], "choose a generator"),
    (["--offline", "--n", "2", "--patient-model", "m"], "--patient-model is for LLM-driven generation"),
    (["--offline"], "needs --n N and --out FILE"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "never.jsonl"
    argv = ["synth", *[str(tmp_path / "missing.json") if a == "MISSING" else a for a in args]]
    if "--n" in args:
        argv += ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"colours": []}', "needs at least one of the sections"),
    ('{"trajectories": []}', "must be a non-empty list"),
    ('{"trajectories": [{"name": "t", "stages": [{"name": "opening", "label": "maybe"}]}]}', "unknown label 'maybe'"),
    ('{"trajectories": [{"name": "t", "stages": [{"name": "opening", "label": "safe", "min_turns": 3, "max_turns": 1}]}]}',
     "min_turns <= max_turns"),
    ('{"trajectories": [{"name": "t", "stages": [{"name": "no_such_stage", "label": "safe"}]}]}', "has no material"),
    ('{"personas": [{"id": "x", "name": "X", "age": 200, "situation": "s", "problems": ["grief"]}]}', "age 200"),
    ('{"personas": [{"id": "x", "name": "X", "age": 30, "situation": "s", "problems": ["knitting"]}]}', "unknown problem"),
])
def test_cli_rejects_malformed_scenarios_files(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "never.jsonl"
    assert main(["synth", "--offline", "--n", "2", "--out", str(out), "--scenarios", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists() and not (tmp_path / "never.jsonl.partial").exists()


def test_cli_list_prints_the_library(capsys):
    assert main(["synth", "--list"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["personas"] >= 60 and doc["trajectories"] >= 20
    names = {t["name"] for t in doc["trajectory_list"]}
    assert {"retraction_after_disclosure", "deescalation_after_safety_plan", "ongoing_abuse_or_neglect"} <= names


def test_cli_llm_mode_runs_the_llm_generator_on_the_scenario_library(tmp_path):
    """Without --offline, the same command drives synth.llm over a real OpenAI-compatible server."""
    from mindguard.llm.fake_server import FakeOpenAIServer

    def respond(req: dict) -> str:
        if req["model"] == "judge-m":
            return "Safety: Safe\nCategories: None\nRationale: ordinary talk"
        if req["model"] == "patient-m":
            return "things have been a lot lately"
        return "That sounds hard. What has been the hardest part?"

    out = tmp_path / "llm.jsonl"
    with FakeOpenAIServer(respond, models=("patient-m", "clin-m", "judge-m")) as server:
        code = main(["synth", "--patient-model", "patient-m", "--clinician-model", "clin-m", "--judge-model", "judge-m",
                     "--base-url", server.url, "--n", "2", "--seed", "1", "--judge-samples", "1",
                     "--max-user-turns", "3", "--concurrency", "2", "--out", str(out), "--quiet"])
        models = {r["model"] for r in server.requests}
    assert code == 0
    assert models == {"patient-m", "clin-m", "judge-m"}
    convs = load_conversations(out)
    assert len(convs) == 2
    assert all(m.label == SAFE and m.votes for c in convs for m in c.user_turns())
    library_ids = {f"{t.name}." for t in load_library().trajectories}
    assert all(any(c.meta["scenario"].startswith(p) for p in library_ids) for c in convs)
