"""LLM-driven two-agent generation: an LLM patient and an LLM clinician talk, an LLM judge labels.

The patient's system prompt is built from a `Scenario`: persona, writing style, presenting
problem and the risk trajectory, with the stage of the current turn spelled out (a turn plan drawn
per conversation from each stage's min/max turns, so trajectories are controlled, as in the
paper's setup); the clinician follows a therapist prompt. Both implement the `Agent` protocol and
talk through `run_dialogue`, like the offline agents. The conversation ends when the plan is done,
when the patient closes it (`[END]` in the final stage) or at `max_user_turns`. Then the judge
(`guards.llm_judge.LLMJudge`, our policy prompt) labels every user turn seeing the whole
conversation (later turns as context only), `k` samples each; the majority label goes on the
turn, every vote in `Message.votes`, the majority's rationale in `Message.rationale`.

`generate_llm` runs conversations concurrently and appends each finished one as a single JSONL line
(write + fsync) to `out`. A rerun of the same call reads the ids already there (cutting a line torn
by a crash) and generates only the missing ones, so a killed run loses nothing and duplicates
nothing. Conversation i depends only on (seed, i): its scenario is `scenarios[i % len]`, its plan
and LLM seeds derive from them. Token totals (and cost, given prices) are reported per role.

Example:
    >>> summary = generate_llm(scenarios, 100, "synth.jsonl", patient, clinician, judge, k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..conversation import Conversation, Message
from ..datasets._jsonl import LockedAppendLog, cut_torn_line
from ..errors import DataError, MindGuardError
from ..guards.llm_judge import JudgeFormatError, LLMJudge
from ..llm import ChatClient, ChatResult, Usage
from ..llm.openai_compat import LLMServerError
from ..taxonomy import HARM_OTHERS, SAFE, SELF_HARM
from ._agents import AgentTurn, Scenario, Stage, run_dialogue

GENERATOR = "llm-v1"
END_MARK = "[END]"

STYLE_HINTS: dict[str, str] = {
    "terse": "very short messages, often a few words",
    "lowercase": "all lowercase, little punctuation",
    "typos": "occasional typos you do not fix",
    "emoji": "an emoji now and then",
    "non_native": "English is not your first language: small grammar slips",
    "rambling": "long run-on messages that drift",
    "formal": "formal, complete sentences",
    "slang": "casual slang",
    "run_on": "run-on sentences with few full stops",
    "no_apostrophes": "no apostrophes (dont, im, cant)",
    "swearing": "you swear when upset",
    "abbreviations": "texting abbreviations (idk, tbh, rn)",
}
# used for stages whose scenario gives no description
STAGE_HINTS: dict[str, str] = {
    "opening": "say hello and, roughly, why you came",
    "problem": "talk about what you are dealing with, concretely, as it comes up",
    "smalltalk": "a digression about something ordinary",
    "coping": "talk about what helps or could help",
    "closing": "wrap up the chat in your own way",
    "hopelessness": "hopeless and exhausted, but no wish to die",
    "hyperbole": "dark figures of speech ('this is killing me') that are clearly not literal",
    "anger_venting": "vent anger at someone; no plan, no intent",
    "past_attempt": "a past attempt, what changed since, and that you are safe now",
    "passive_ideation": "a current, passive wish to be dead or to stop existing",
    "active_ideation": "current thoughts of ending your life",
    "plan_means": "a method, means at hand, a time",
    "recent_self_harm": "self-harm in the last days",
    "self_continuation": "continue the thread of risk: answer questions, restate, deflect",
    "safety_planning": "work through a safety plan, hesitantly; the risk is not resolved yet",
    "resolution": "the risk you spoke of is resolved credibly: you agree a safety plan or name reasons to stay safe",
    "after_resolution": "calmer talk after the plan",
    "threat": "intent to hurt a specific person: where or when",
    "other_continuation": "carry the threat forward, in terse answers",
}
RISK_HINTS: dict[str, str] = {
    SAFE: "Nothing you say in this stage signals a current risk to yourself or anyone else (the past, venting, "
          "dark humour or figures of speech are fine when the stage calls for them).",
    SELF_HARM: "In this stage your messages show a current risk to yourself, as the stage describes. Say it the way "
               "real people do: often indirectly, briefly or hesitantly, sometimes only in answer to a question.",
    HARM_OTHERS: "In this stage your messages show a current risk that you harm someone else, as the stage describes. "
                 "Say it the way real people do: often tersely, sometimes only in answer to a question.",
}

CLINICIAN_PROMPT = (
    "You are a warm, skilled mental-health support companion (trained in CBT, motivational interviewing and "
    "crisis intervention) chatting with a person by text. Reflect and validate what they say, ask one open "
    "question at a time, and keep replies to two to four sentences (about 40-60 words). If the person mentions "
    "any current thought of harming themselves or someone else, ask about it directly and calmly (thoughts, "
    "plan, means, timing), express care, and share crisis resources (for example calling or texting 988 in the "
    "US, or local emergency services), and keep talking with them. Do not diagnose or prescribe. Write only your "
    "reply."
)


class ConversationFailed(MindGuardError):
    """One conversation could not be completed (the run goes on; a rerun retries it)."""


def _seed(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


class TokenMeter:
    """Thread-safe token totals per role (patient, clinician, judge)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_role: dict[str, Usage] = {}

    def add(self, role: str, usage: Usage) -> None:
        with self._lock:
            u = self.by_role.get(role, Usage())
            self.by_role[role] = Usage(u.prompt_tokens + usage.prompt_tokens, u.completion_tokens + usage.completion_tokens)

    def totals(self, prices: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
        """{"patient": {"prompt_tokens", "completion_tokens"}, …, "total_tokens", "cost_usd"}. `prices`
        maps a role to (USD per million prompt tokens, USD per million completion tokens)."""
        with self._lock:
            out: dict[str, Any] = {r: {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
                                   for r, u in sorted(self.by_role.items())}
            out["total_tokens"] = sum(u.total_tokens for u in self.by_role.values())
            cost = None
            if prices:
                cost = 0.0
                for role, u in self.by_role.items():
                    p_in, p_out = prices.get(role, (0.0, 0.0))
                    cost += (u.prompt_tokens * p_in + u.completion_tokens * p_out) / 1e6
                cost = round(cost, 6)
            out["cost_usd"] = cost
            return out


def plan_turns(scenario: Scenario, rng: random.Random, max_user_turns: int) -> list[Stage]:
    """The stage of every user turn: each stage gets min..max turns, drawn from `rng`; capped by
    the budget (the last stage is kept so a conversation never stops mid-crisis without its end)."""
    plan: list[Stage] = []
    for st in scenario.stages:
        plan += [st] * rng.randint(st.min_turns, max(st.min_turns, st.max_turns))
    if not plan:
        plan = [scenario.stages[0]]
    if len(plan) > max_user_turns:
        plan = plan[: max_user_turns - 1] + [plan[-1]] if max_user_turns > 1 else plan[:1]
    return plan


def _stage_line(st: Stage) -> str:
    desc = st.description or STAGE_HINTS.get(st.name, st.name.replace("_", " "))
    return f"{st.name.replace('_', ' ')} — {desc}"


def patient_system_prompt(scenario: Scenario, plan: Sequence[Stage], turn: int) -> str:
    """The patient's instructions for user turn `turn` (0-based) of `plan`."""
    p = scenario.persona
    styles = "; ".join(STYLE_HINTS.get(s, s.replace("_", " ")) for s in p.style) or "plain, everyday texting"
    arc: list[str] = []
    seen: list[Stage] = []
    for st in plan:
        if not seen or seen[-1] is not st:
            seen.append(st)
    for n, st in enumerate(seen, 1):
        arc.append(f"{n}. {_stage_line(st)}")
    cur = plan[turn]
    last = turn == len(plan) - 1
    lines = [
        "You are role-playing a person who is chatting with an AI mental-health support companion. The chats "
        "train a safety classifier, so they must read like real ones. Stay in character; never mention "
        "role-play, stages or instructions.",
        "",
        f"Who you are: {p.name}, {p.age}, {p.situation}." + (f" Background: {p.culture}." if p.culture else ""),
        f"What brings you here: {scenario.problem.replace('_', ' ')}.",
        f"How you write: {styles}. Write like a real person texting: usually one to three short sentences "
        "(about 5-40 words), no lists, no stage directions, no quotation marks, no name prefix.",
        "",
        "How this conversation unfolds, one stage after another:",
        *arc,
        "",
        f"Now (your message {turn + 1} of about {len(plan)}): {_stage_line(cur)}.",
        RISK_HINTS.get(cur.label, RISK_HINTS[SAFE]),
        "Answer what the companion just said when it fits, and move the conversation on as the stage asks.",
    ]
    if last:
        lines.append(f"This is your last message: close the conversation naturally, then write {END_MARK}.")
    lines.append("Write only your next message.")
    return "\n".join(lines)


_PREFIX_RX = re.compile(r"^\s*(\*\*)?(patient|user|me|client|[A-Z][a-z]+)\s*(\*\*)?\s*:\s*", re.IGNORECASE)


def clean_patient_text(text: str, name: str) -> tuple[str, bool]:
    """Strip what chat models add around a role-played message; returns (text, ended)."""
    ended = END_MARK in text
    text = text.replace(END_MARK, " ")
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL)
    m = _PREFIX_RX.match(text)
    if m and m.group(2).lower() in ("patient", "user", "me", "client", name.lower()):
        text = text[m.end():]
    text = " ".join(text.split()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text, ended


class LLMPatient:
    """The patient agent for one conversation (it holds that conversation's turn plan)."""

    role = "user"

    def __init__(self, client: ChatClient, plan: Sequence[Stage], meter: TokenMeter | None = None,
                 temperature: float = 0.9, max_tokens: int = 200, seed: int = 0) -> None:
        self.client, self.plan, self.meter = client, list(plan), meter
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed

    def _chat(self, history: Sequence[Message], scenario: Scenario, turn: int) -> list[dict[str, str]]:
        # the patient model plays the "assistant" of its own chat; the companion is its "user"
        chat = [{"role": "system", "content": patient_system_prompt(scenario, self.plan, turn)}]
        if not history:
            chat.append({"role": "user", "content": "(The chat window opens. Send your first message.)"})
        for m in history:
            chat.append({"role": "assistant" if m.role == "user" else "user", "content": m.content})
        return chat

    def reply(self, history: Sequence[Message], scenario: Scenario, rng: random.Random) -> AgentTurn:
        turn = min(sum(m.role == "user" for m in history), len(self.plan) - 1)
        chat = self._chat(history, scenario, turn)
        for attempt in range(2):
            res = self.client.complete(chat, temperature=self.temperature, max_tokens=self.max_tokens,
                                       seed=_seed(self.seed, turn, attempt))
            _meter(self.meter, "patient", res)
            text, ended = clean_patient_text(res.text, scenario.persona.name)
            if text:
                # the patient may close the chat early, but only once the final stage has begun
                final_start = len(self.plan)
                while final_start > 0 and self.plan[final_start - 1] is self.plan[-1]:
                    final_start -= 1
                done = turn >= len(self.plan) - 1 or (ended and turn >= final_start)
                return AgentTurn(text, None, self.plan[turn].name, done)
        raise ConversationFailed(f"the patient model gave an empty message twice (turn {turn + 1})")


class LLMClinician:
    """The clinician agent: a chat LLM behind a therapist system prompt."""

    role = "assistant"

    def __init__(self, client: ChatClient, system_prompt: str = CLINICIAN_PROMPT, meter: TokenMeter | None = None,
                 temperature: float = 0.7, max_tokens: int = 300, seed: int = 0) -> None:
        self.client, self.system_prompt, self.meter = client, system_prompt, meter
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed

    def reply(self, history: Sequence[Message], scenario: Scenario, rng: random.Random) -> AgentTurn:
        chat = [{"role": "system", "content": self.system_prompt}]
        chat += [{"role": m.role, "content": m.content} for m in history if m.role in ("user", "assistant")]
        turn = sum(m.role == "user" for m in history)
        for attempt in range(2):
            res = self.client.complete(chat, temperature=self.temperature, max_tokens=self.max_tokens,
                                       seed=_seed(self.seed, turn, attempt))
            _meter(self.meter, "clinician", res)
            text = " ".join(re.sub(r"<think>.*?</think>", " ", res.text, flags=re.DOTALL).split())
            if text:
                return AgentTurn(text)
        raise ConversationFailed(f"the clinician model gave an empty reply twice (turn {turn})")


def _meter(meter: TokenMeter | None, role: str, res: ChatResult) -> None:
    if meter is not None:
        meter.add(role, res.usage)


def label_conversation(conv: Conversation, judge: LLMJudge, k: int, seed: int = 0, hindsight: bool = True,
                       meter: TokenMeter | None = None) -> Conversation:
    """Label every user turn by the judge's majority over `k` samples; votes go on the turn."""
    msgs = list(conv.messages)
    for i in conv.user_turn_indices():
        context = conv.messages if hindsight else conv.messages[: i + 1]
        try:
            j = judge.vote(context, target=i, k=k, seed=_seed(seed, "judge", i))
        except JudgeFormatError as exc:
            raise ConversationFailed(f"turn {i + 1}: {exc}") from exc
        if meter is not None:
            meter.add("judge", j.usage)
        m = msgs[i]
        votes = {f"judge_{n + 1}": v for n, v in enumerate(j.votes)}
        msgs[i] = Message(m.role, m.content, j.label, votes, j.rationale)
    return Conversation(conv.id, tuple(msgs), conv.meta)


# -- the resumable writer ------------------------------------------------------------------------
def read_done_ids(out: Path) -> set[str]:
    """Ids of the conversations already in `out`. A last line without its newline is what a crash
    mid-write leaves: it is cut off. Any other unreadable line is an error (not our file)."""
    if not out.exists():
        return set()
    cut_torn_line(out)
    ids: set[str] = set()
    for n, line in enumerate(out.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{out}:{n}: not a conversation line; is this the output of an earlier synth run?") from exc
    return ids


def _model_name(client: ChatClient) -> str:
    return str(getattr(client, "model", type(client).__name__))


def generate_one(i: int, scenario: Scenario, patient_client: ChatClient, clinician_client: ChatClient, judge: LLMJudge,
                 k: int, max_user_turns: int, seed: int, meter: TokenMeter | None = None, hindsight: bool = True,
                 clinician_prompt: str = CLINICIAN_PROMPT) -> Conversation:
    """Conversation number `i`: dialogue, then judge labels. Depends only on (seed, i, scenario)."""
    rng = random.Random(f"mindguard-llm:{seed}:{i}")
    plan = plan_turns(scenario, rng, max_user_turns)
    base = _seed(seed, i)
    patient = LLMPatient(patient_client, plan, meter, seed=base)
    clinician = LLMClinician(clinician_client, clinician_prompt, meter, seed=base + 1)
    conv_id = f"llm-{seed}-{i:05d}"
    try:
        conv = run_dialogue(patient, clinician, scenario, rng, max_user_turns=len(plan), conv_id=conv_id,
                            source="synthetic-llm")
    except DataError as exc:  # e.g. an empty message slipped through: this conversation only
        raise ConversationFailed(str(exc)) from exc
    n_user = len(conv.user_turns())
    meta = {**dict(conv.meta), "generator": GENERATOR, "seed": seed, "index": i,
            "stages": [st.name for st in plan[:n_user]], "intended_labels": [st.label for st in plan[:n_user]],
            "models": {"patient": _model_name(patient_client), "clinician": _model_name(clinician_client),
                       "judge": _model_name(judge.client)},
            "judge_k": k, "judge_hindsight": hindsight}
    labelled = label_conversation(Conversation(conv.id, conv.messages, meta), judge, k, seed=base, hindsight=hindsight,
                                  meter=meter)
    return labelled


def generate_llm(scenarios: Sequence[Scenario], n: int, out: str | Path, patient_client: ChatClient,
                 clinician_client: ChatClient, judge_client: ChatClient, k: int = 3, max_user_turns: int = 40,
                 concurrency: int = 4, seed: int = 0, progress: bool = True, *, temperature_judge: float = 0.7,
                 hindsight: bool = True, clinician_prompt: str = CLINICIAN_PROMPT,
                 prices: Mapping[str, Sequence[float]] | None = None, max_consecutive_failures: int = 5,
                 log: Any = None) -> dict[str, Any]:
    """Generate `n` labelled conversations into the JSONL file `out`, resuming a previous run.

    Returns a summary: requested, already present, written now, failed (a rerun retries them),
    token totals per role and cost. Errors that every request would hit (server unreachable,
    key rejected, unknown model) stop the run at once; others skip the conversation, unless
    `max_consecutive_failures` conversations fail in a row.
    """
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if not scenarios:
        raise DataError("no scenarios to generate from")
    if k < 1:
        raise DataError(f"k (judge samples per turn) must be at least 1, got {k}")
    if max_user_turns < 1:
        raise DataError(f"max_user_turns must be at least 1, got {max_user_turns}")
    out = Path(out)
    t0 = time.perf_counter()
    writer = LockedAppendLog(out)  # lock first, then read: a concurrent run cannot slip in between
    try:
        done = read_done_ids(out)
        todo = [i for i in range(n) if f"llm-{seed}-{i:05d}" not in done]
        present = n - len(todo)
        meter = TokenMeter()
        judge = LLMJudge(judge_client, k=k, temperature=temperature_judge, scoring="votes", seed=seed)
        bar = _bar(n, present, progress)
        written, failed, streak = 0, 0, 0
        errors: list[str] = []
        pool = ThreadPoolExecutor(max(1, concurrency))
        try:
            pending: dict[Future[Conversation], int] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < max(1, concurrency):
                    i = queue.pop(0)
                    pending[pool.submit(generate_one, i, scenarios[i % len(scenarios)], patient_client,
                                        clinician_client, judge, k, max_user_turns, seed, meter, hindsight,
                                        clinician_prompt)] = i
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    try:
                        conv = fut.result()
                    except (ConversationFailed, LLMServerError) as exc:
                        if isinstance(exc, LLMServerError) and exc.fatal:
                            raise
                        failed += 1
                        streak += 1
                        errors.append(f"conversation {i}: {exc}")
                        if log:
                            log(f"conversation {i} failed: {exc}")
                        if streak >= max_consecutive_failures:
                            raise MindGuardError(f"{streak} conversations failed in a row; last: {exc}") from exc
                        continue
                    writer.append(conv.to_dict())
                    written += 1
                    streak = 0
                    bar.update(1)
        finally:
            # on an error, drop the queued work and do not wait for conversations in flight
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
    finally:
        writer.close()
    return {"out": str(out), "requested": n, "already_present": present, "written": written, "failed": failed,
            "errors": errors[:10], "tokens": meter.totals(prices), "seconds": round(time.perf_counter() - t0, 2)}


def _bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="synth (llm)", unit="conv", disable=not enabled)


__all__ = ["CLINICIAN_PROMPT", "GENERATOR", "ConversationFailed", "LLMClinician", "LLMPatient", "TokenMeter",
           "clean_patient_text", "generate_llm", "generate_one", "label_conversation", "patient_system_prompt",
           "plan_turns", "read_done_ids"]
