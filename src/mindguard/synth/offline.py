"""The offline two-agent engine: a patient and a clinician that write from authored material, no LLM.

Both agents implement the `Agent` protocol of `synth._agents` and talk through `run_dialogue`, like
the LLM-driven agents. The patient lays out a turn plan from the scenario's trajectory (a random
number of turns per stage), and writes each turn from the phrase bank of its stage
(`synth/material/*.txt`), specialised by presenting problem and by the thread of risk under way,
answering the clinician's last question when the bank has an answer for it. The label of every
user turn is the label of its stage, so it is known by construction; banks carry the label they were
written for and a one-line rationale, and `check_material` refuses a library whose stages would
draw from a bank written for another label. Short context-dependent turns ("yeah", "tonight") are
drawn from per-label answer banks, so the same words appear as safe after an ordinary question and
as unsafe after a risk question. The clinician answers from a recipe per patient move (reflect,
validate, open question, psychoeducation, coping step, direct safety question, crisis resources,
safety plan), working through the risk steps it has not covered yet. The two agents share a small
blackboard (the plan, the slot bindings, the last question asked). Every random choice flows from
one `random.Random` seeded per conversation, so the same seed gives byte-identical output.

Example:
    >>> convs = list(generate_offline(load_library(), n=2, seed=1))
    >>> all(m.label is not None for c in convs for m in c.user_turns())
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..conversation import Conversation, Message
from ..errors import DataError
from ..taxonomy import HARM_OTHERS, SAFE, SELF_HARM
from ._agents import AgentTurn, Scenario, Stage, run_dialogue
from .library import PersonaSpec, ScenarioLibrary, load_library
from .material import Material, tidy
from .style import apply_style

GENERATOR = "offline-v1"
_CLASS = {SAFE: "safe", SELF_HARM: "self", HARM_OTHERS: "other"}
# Stages that open a thread of risk; the clinician meets them with a direct question.
_SELF_DISCLOSURES = {"passive_ideation", "active_ideation", "plan_means", "recent_self_harm", "method_seeking",
                     "asking_for_friend", "friend_reveal", "command_voices", "preparation", "entrapment",
                     "indirect_disclosure", "relapse"}
_OTHER_DISCLOSURES = {"threat", "threat_means", "abuse_neglect"}
_CONTINUATIONS = {"self_continuation", "other_continuation"}
_SAFE_ANSWERED = {"risk", "clarify", "now"}
_THREADS = {"recent_self_harm": "self_harm", "command_voices": "voices", "method_seeking": "method",
            "preparation": "preparation", "abuse_neglect": "abuse", "threat": "threat", "threat_means": "threat",
            "asking_for_friend": "friend", "indirect_disclosure": "ideation"}
_DEFAULT_RATIONALE = {SELF_HARM: "continues the current self-harm risk disclosed earlier; not resolved",
                      HARM_OTHERS: "continues the current risk to another person disclosed earlier; not resolved"}
_PEOPLE = ("partner", "ex", "ex_new", "friend", "boss", "coworker", "sibling", "stepparent", "bully", "landlord",
           "roommate", "neighbour", "abuser", "kid", "baby", "elder", "deceased", "dep", "rival")
_BOUND_POOLS = ("job", "workplace", "city", "pet", "pet_kind", "school", "subject", "substance", "pills", "drink",
                "hobby", "game", "team", "band", "car", "sport", "instrument", "town", "shop")
_PRONOUNS = {"f": {"he": "she", "him": "her", "his": "her", "himself": "herself", "hes": "she's"},
             "m": {"he": "he", "him": "him", "his": "his", "himself": "himself", "hes": "he's"}}
_GENDER_OF = {"mum": "f", "mom": "f", "mam": "f", "mother": "f", "mother-in-law": "f", "nan": "f", "gran": "f",
              "grandma": "f", "nana": "f", "wife": "f", "sister": "f", "daughter": "f", "aunt": "f", "hooyo": "f",
              "dad": "m", "father": "m", "da": "m", "papi": "m", "grandad": "m", "grandpa": "m", "husband": "m",
              "brother": "m", "son": "m", "uncle": "m", "father-in-law": "m", "papa": "m"}
# Risk steps the clinician works through, in a loosely clinical order.
_SELF_STEPS = ("ask_risk", "ask_means", "ask_when", "resources", "ask_support", "ask_reasons", "ask_scale")
_OTHER_STEPS = ("ask_intent_other", "ask_means_other", "ask_when_other", "distance_step", "resources_other", "ask_support")
_ABUSE_STEPS = ("ask_dep_safe", "ask_what_happens", "abuse_resources", "ask_support", "respite_step")
_QUESTION_OF = {  # clinician part -> the question type the patient may answer next
    "ask": "open", "ask_check": "open", "ask_past": "open", "ask_friend": "friend", "ask_fiction": "open",
    "ask_intrusive": "open", "ask_loss": "open", "return": "open", "ask_next": "open",
    "ask_risk": "risk", "ask_risk_gentle": "risk", "ask_risk_again": "risk", "ask_now": "now", "clarify": "clarify",
    "clarify_anger": "clarify", "ask_means": "means", "ask_when": "when", "resources": "resources",
    "ask_support": "support", "ask_reasons": "reasons", "ask_scale": "scale", "ask_injury": "injury",
    "ask_voices": "voices", "ask_about_you": "about_you", "plan_step": "plan", "ask_intent_other": "intent_other",
    "ask_means_other": "means_other", "ask_when_other": "when_other", "distance_step": "plan_other",
    "resources_other": "resources", "ask_dep_safe": "dep_safe", "ask_what_happens": "what_happens",
    "abuse_resources": "resources", "respite_step": "plan_other", "safety_plan_start": "plan", "means_away_other": "plan_other",
}


@dataclass
class _Board:
    """What the two offline agents share during one conversation."""

    scenario_id: str = ""
    persona: PersonaSpec | None = None
    plan: list[tuple[int, Stage]] = field(default_factory=list)
    t: int = 0
    end_on_user: bool = True
    tags: frozenset[str] = frozenset()
    slots: dict[str, str] = field(default_factory=dict)
    people: dict[str, dict[str, str]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    stage: str = ""
    move: str = ""
    label: str = SAFE
    question: str = ""
    thread: str = ""
    steps_done: set[str] = field(default_factory=set)
    resolved: bool = False
    disclosed: bool = False
    base_tags: frozenset[str] = frozenset()
    topic_known: bool = False
    turn_stages: list[str] = field(default_factory=list)
    after_ask: bool = False

    def set_thread(self, thread: str) -> None:
        """Follow a new thread of risk; material can require it with the tag th_<thread>."""
        self.thread = thread
        self.tags = self.base_tags | ({f"th_{thread}"} if thread else set())

    def reset(self) -> None:
        """Forget the previous conversation (the agents hold on to one board)."""
        self.__dict__.update(_Board().__dict__)


class _Slots:
    """Fills `{slot}` and `{person:form}` from the conversation's bindings, binding lazily and reproducibly."""

    def __init__(self, board: _Board, material: Material, rng: random.Random, problem: str,
                 problem_rivals: Sequence[str]) -> None:
        self.b, self.m, self.rng, self.problem, self.rivals = board, material, rng, problem, tuple(problem_rivals)
        self.speaking = "user"  # people the user names become m_<slot> tags the companion may refer to
        self.mentioned: set[str] = set()

    def _pool(self, name: str) -> str:
        locale = self.b.persona.locale if self.b.persona else "other"
        key = self.m.first(f"pool.{name}/{locale}", f"pool.{name}/{self.problem}", f"pool.{name}")
        if key is None:
            raise DataError(f"material uses slot {{{name}}} but there is no bank pool.{name} and nothing binds it")
        return self.m.render(key, self.rng, self, tags=self.b.tags)

    def _name(self, gender: str) -> str:
        taken = {p["name"] for p in self.b.people.values()} | {self.b.persona.persona.name if self.b.persona else ""}
        for _ in range(20):
            n = self._pool(f"name_{gender}")
            if n not in taken:
                return n
        return n

    def person(self, slot: str) -> dict[str, str]:
        if slot in self.b.people:
            return self.b.people[slot]
        b, rng = self.b, self.rng
        ps = b.persona
        fixed = ps.slots.get(slot, "") if ps else ""
        if slot == "rival":
            pick = self.rivals[rng.randrange(len(self.rivals))] if self.rivals else "coworker"
            b.people["rival"] = self.person(pick)
            return b.people["rival"]
        if slot == "dep":
            dep = next((t[4:] for t in sorted(b.tags) if t.startswith("dep_")), "kid")
            b.people["dep"] = self.person(dep)
            return b.people["dep"]
        word = ""
        if slot in ("elder", "deceased"):
            word = ps.slots.get(f"{slot}_word", "") if ps else ""
            if not word:
                word = self._pool(f"{slot}_word")
        gender = _GENDER_OF.get(word, "")
        name = ""
        if fixed:
            name, _, g = fixed.partition(":")
            gender = g or gender
        if slot == "partner" and not gender:
            own = ps.gender if ps else "n"
            opposite = {"f": "m", "m": "f"}.get(own, rng.choice("fm"))
            gender = opposite if rng.random() < 0.8 else ("f" if opposite == "m" else "m")
        gender = gender or rng.choice("fm")
        name = name or self._name(gender)
        rel = self._relation(slot, gender, word)
        p = {"name": name, "gender": gender, "rel": rel, "word": word or rel.removeprefix("my ")}
        b.people[slot] = p
        return p

    def _relation(self, slot: str, g: str, word: str) -> str:
        ps, rng = self.b.persona, self.rng
        age = ps.persona.age if ps else 30
        us = ps is not None and ps.locale in ("us", "ca")
        f = g == "f"
        if slot == "partner":
            w = ps.slots.get("partner_word", "") if ps else ""
            if not w:
                if age >= 27 and rng.random() < 0.55:
                    w = "wife" if f else "husband"
                else:
                    w = rng.choice(("girlfriend" if f else "boyfriend", "partner"))
            return f"my {w}"
        if slot in ("elder", "deceased"):
            return f"my {word}"
        table = {
            "ex": ("my ex",), "ex_new": (f"my ex's new {'girlfriend' if f else 'boyfriend'}",),
            "friend": ("my friend", "my best friend", "my mate" if not us else "my friend", "a friend of mine"),
            "boss": ("my boss", "my manager", "my supervisor"),
            "coworker": ("my coworker" if us else "my colleague", "someone at work", "this " + ("woman" if f else "guy") + " at work"),
            "sibling": ("my sister" if f else "my brother",),
            "stepparent": (("my stepmom" if us else "my stepmum") if f else "my stepdad",),
            "bully": (("this girl in my year" if f else "this guy in my year", "this kid at school") if age < 19
                      else ("this " + ("woman" if f else "guy") + " at work", "someone online")),
            "landlord": ("my landlord",),
            "roommate": ("my roommate" if us else "my flatmate", "my housemate"),
            "neighbour": ("my neighbor" if us else "my neighbour", "the " + ("woman" if f else "guy") + " next door"),
            "abuser": ("my ex", "my stepdad" if not f else "my stepmom", "my uncle" if not f else "my aunt"),
            "kid": ("my daughter" if f else "my son",), "baby": ("the baby", "my baby"),
        }
        options = table.get(slot, (f"my {slot}",))
        return options[rng.randrange(len(options))]

    def __call__(self, name: str) -> str:
        base, _, form = name.partition(":")
        if base in _PEOPLE or base.lower() in _PEOPLE:
            cap = base[:1].isupper()
            p = self.person(base.lower())
            if self.speaking == "user":
                self.mentioned |= {base.lower()} | {k for k, v in self.b.people.items() if v is p}
            if not form:
                out = p["name"]
            elif form.lower() == "rel":
                out = p["rel"]
            elif form.lower() == "word":
                out = p["word"]
            elif form.lower() == "your":
                out = "your " + p["rel"][3:] if p["rel"].startswith("my ") else p["rel"]
            else:
                pronoun = _PRONOUNS[p["gender"]].get(form.lower())
                if pronoun is None:
                    raise DataError(f"unknown person form {{{name}}}; allowed: rel, word, your, he, him, his, himself, hes")
                out = pronoun
                cap = cap or form[:1].isupper()
            return out[:1].upper() + out[1:] if cap else out
        if name in self.b.slots:
            return self.b.slots[name]
        ps = self.b.persona
        if ps is not None and name in ps.slots:
            self.b.slots[name] = ps.slots[name]
            return ps.slots[name]
        if name == "parent":
            v = "mom" if ps is not None and ps.locale in ("us", "ca", "ph") else "mum"
            self.b.slots[name] = v
            return v
        if name in ("job", "workplace"):
            job, _, place = self._pool("jobplace").partition(" @ ")
            self.b.slots.setdefault("job", job.strip())
            self.b.slots.setdefault("workplace", place.strip() or "work")
            return self.b.slots[name]
        if name == "topic" and not self.b.topic_known:
            return self.m.render("pool.topic", self.rng, self, tags=self.b.tags)
        if name == "parent_role":
            g = ps.gender if ps else "n"
            return {"f": "mum" if ps is None or ps.locale not in ("us", "ca") else "mom", "m": "dad"}.get(g, "parent")
        if name == "age":
            return str(ps.persona.age if ps else 30)
        if name in _BOUND_POOLS:
            self.b.slots[name] = self._pool(name)
            return self.b.slots[name]
        return self._pool(name)


class OfflinePatient:
    """The patient agent: writes each user turn from the material of its trajectory stage."""

    role = "user"

    def __init__(self, library: ScenarioLibrary, material: Material, board: _Board) -> None:
        self.library, self.m, self.b = library, material, board
        self._slots: _Slots | None = None

    # -- planning --------------------------------------------------------------------------
    def start(self, scenario: Scenario, rng: random.Random) -> int:
        """Lay out the turn plan and bind the conversation's people; returns the number of user turns."""
        b = self.b
        b.reset()
        b.scenario_id = scenario.id
        pid = str(scenario.meta.get("persona_id", ""))
        b.persona = self.library.persona(pid) if pid else _persona_from(scenario)
        problem = self.library.problem(scenario.problem) if any(p.id == scenario.problem for p in self.library.problems) else None
        tags = set(b.persona.has) | {f"pb_{scenario.problem}", f"loc_{b.persona.locale}", f"g_{b.persona.gender}"}
        age = b.persona.persona.age
        tags |= {"teen"} if age < 20 else {"adult"}
        if age >= 60:
            tags.add("old")
        if age < 30:
            tags.add("young")
        deps = {"caregiving": ("elder",), "postpartum": ("baby",), "parenting_stress": ("kid", "baby")}.get(
            scenario.problem, ("kid", "baby", "elder"))
        dep = next((d for d in deps if d in b.persona.has), None)
        if dep:
            tags |= {"dep", f"dep_{dep}"}
        b.tags = frozenset(tags)
        self._slots = _Slots(b, self.m, rng, scenario.problem, problem.rivals if problem else ())
        b.base_tags = b.tags
        long_talk = rng.random() < 0.12
        for k, st in enumerate(scenario.stages):
            n = rng.randint(st.min_turns, st.max_turns)
            if long_talk and st.name == "problem":
                n += rng.randint(2, 6)
            b.plan += [(k, st)] * n
        if not b.plan:
            b.plan = [(0, scenario.stages[0])]
        b.end_on_user = rng.random() < 0.25
        return len(b.plan)

    # -- the Agent protocol ----------------------------------------------------------------
    def reply(self, history: Sequence[Message], scenario: Scenario, rng: random.Random) -> AgentTurn:
        b = self.b
        if not history and (b.scenario_id != scenario.id or b.t != 0 or not b.plan):
            self.start(scenario, rng)
            b.end_on_user = True  # driven without start(): end when the plan ends
        assert self._slots is not None
        t = min(b.t, len(b.plan) - 1)
        k, stage = b.plan[t]
        first = t == 0 or b.plan[t - 1][0] != k
        cls = _CLASS[stage.label]
        if stage.name in _THREADS and first:
            b.set_thread(_THREADS[stage.name])
        elif first and stage.name in _SELF_DISCLOSURES and not b.thread:
            b.set_thread("ideation")
        key, move = self._choose(stage, cls, first, scenario.problem, rng)
        phrase, bank = self.m.pick(key, rng, b.used, b.tags)
        if bank.label is not None and bank.label != stage.label:
            raise DataError(f"stage {stage.name!r} is labelled {stage.label} but material bank {key!r} is written for "
                            f"{bank.label}")
        b.used.add(phrase.text)
        text = self.m.expand(phrase.text, rng, self._slots, tags=b.tags)
        short = move.endswith("short") or (move.startswith("ans:") and len(text.split()) <= 4)
        b.after_ask = ".after_ask" in key
        self._extra_rationale: str | None = None
        text = self._shape(text, stage, cls, move, short, first, scenario.problem, rng)
        text = apply_style(text, b.persona.persona.style if b.persona else (), rng, short=len(text.split()) <= 3,
                           sad=stage.label != SAFE)
        rationale = phrase.rationale or bank.rationale or (self._extra_rationale if stage.label == SAFE else None)
        if stage.label != SAFE and not rationale:
            rationale = _DEFAULT_RATIONALE[stage.label]
        if self._slots.mentioned:
            b.base_tags |= {f"m_{x}" for x in self._slots.mentioned}
            b.set_thread(b.thread)
        if f"/{scenario.problem}" in key:
            b.topic_known = True
        b.turn_stages.append(stage.name)
        b.stage, b.move, b.label = stage.name, move, stage.label
        if key == "p.opening" and len(text.split()) <= 9:
            b.move = "opening_generic"
        if stage.name in ("resolution", "other_resolution"):
            b.resolved = True
            b.set_thread("")
        b.t += 1
        done = b.t >= len(b.plan) and b.end_on_user
        return AgentTurn(text, stage.label, stage.name, done, rationale)

    def _choose(self, stage: Stage, cls: str, first: bool, problem: str, rng: random.Random) -> tuple[str, str]:
        """The bank to write from, and the name of the move (the clinician answers the move)."""
        m, b, q, s = self.m, self.b, self.b.question, stage.name
        tags = b.tags

        def spec(base: str, extra: Sequence[str] = ()) -> str | None:
            # a problem- or thread-specific bank when one fits, else the generic one
            options = [k for k in (f"{base}/{problem}", *(f"{base}/{x}" for x in extra)) if m.usable(k, tags)]
            generic = base if m.usable(base, tags) else None
            if options and (generic is None or rng.random() < 0.7):
                return options[rng.randrange(len(options))]
            return generic

        threads = (b.thread,) if b.thread else ()
        asked = bool(q) and q != "open"
        # a safe stage never leaves a risk question hanging: the answer is a credible "no"
        if asked and cls == "safe" and q in _SAFE_ANSWERED:
            for key in (f"p.{s}.ans.{q}", f"p.{b.stage}.ans.{q}", f"p.safe.ans.{q}"):
                if m.usable(key, tags):
                    return key, f"ans:{q}"
        if first and s not in _CONTINUATIONS:
            if asked:
                found = spec(f"p.{s}.after_ask", threads)
                if found and rng.random() < 0.8:
                    return found, s
            found = spec(f"p.{s}.first", threads) or spec(f"p.{s}", threads)
            if found:
                return found, s
        # answers to the clinician's question: stage-specific, thread-specific, then per label class
        if asked:
            p_answer = 0.85 if cls != "safe" else 0.95
            for key in (f"p.{s}.ans.{q}", f"p.{b.thread}.ans.{q}" if b.thread else "", f"p.{cls}.ans.{q}"):
                if key and m.usable(key, tags) and rng.random() < p_answer:
                    return key, f"ans:{q}"
        terse = "terse" in (b.persona.persona.style if b.persona else ())
        if cls != "safe" or s in ("problem", "coping", "after_resolution"):
            if rng.random() < (0.22 if terse else 0.12) and m.usable(f"p.{cls}.short", tags) and b.move != f"{cls}.short":
                return f"p.{cls}.short", f"{cls}.short"
        if s == "problem" and cls == "safe" and rng.random() < 0.07 and b.move not in ("smalltalk", "botq"):
            if rng.random() < 0.3 and m.usable("p.botq", tags):
                return "p.botq", "botq"
            return "p.smalltalk", "smalltalk"
        found = spec(f"p.{s}.more", threads) or spec(f"p.{s}", threads)
        if found is None and s == "after_resolution":
            found = spec("p.problem")
        if found is None:
            found = spec(f"p.{cls}_continuation", threads)
        if found is None:
            raise DataError(f"no material for stage {s!r} (expected a bank p.{s} in synth/material)")
        return found, s

    def _extra_bank(self, stage: Stage, cls: str, first: bool, problem: str, rng: random.Random) -> str | None:
        """Where a second sentence comes from: problem details around ordinary talk and before a
        disclosure, more of the same stage in hard negatives and continuing risk, else a filler."""
        m, tags = self.m, self.b.tags
        r = rng.random()
        options: list[str] = []
        if cls == "other":  # a threat or an abuse disclosure reads best bare, or with a breath before it
            options += ["p.filler"] if r < 0.5 else []
        elif stage.name in ("opening", "problem", "coping", "hopelessness", "after_resolution") or (cls != "safe" and first):
            options += [f"p.problem/{problem}", "p.problem"] if r < 0.8 else ["p.filler"]
        elif cls != "safe":
            options += [f"p.{stage.name}/{self.b.thread}", f"p.{stage.name}.more", f"p.{cls}_continuation/{self.b.thread}"] if r < 0.5 else []
            options += ["p.filler"]
        elif stage.name in ("closing", "smalltalk"):
            options += ["p.filler"]
        else:
            options += [f"p.{stage.name}.more", f"p.{stage.name}", f"p.{stage.name}/{self.b.thread}"] if r < 0.6 else []
            options += ["p.filler"]
        options = [k for k in options if m.usable(k, tags) and m.banks[k].label in (None, stage.label)]
        if not options:
            return None
        return options[0] if len(options) == 1 or rng.random() < 0.65 else options[rng.randrange(1, len(options))]

    def _shape(self, text: str, stage: Stage, cls: str, move: str, short: bool, first: bool, problem: str,
               rng: random.Random) -> str:
        """Length and discourse shaping: rambling personas add sentences, terse ones keep the first."""
        b, m = self.b, self.m
        styles = b.persona.persona.style if b.persona else ()
        assert self._slots is not None
        if short:
            return text
        answer = move.startswith("ans:") or b.after_ask
        # a disclosure keeps all its words: cutting it could change what it means
        if "terse" in styles and rng.random() < 0.55 and not (first and cls != "safe"):
            parts = _sentences(text)
            if len(parts) > 1:
                text = parts[0]
        rambling, terse = "rambling" in styles, "terse" in styles
        # real users write a median of ~17 words: most turns carry a second sentence of context
        long_message = rng.random() < 0.08  # now and then anyone pours it all out in one message
        p_extra, decay, most = (0.9, 0.8, 4) if rambling or long_message else (0.15, 0.5, 1) if terse else (0.7, 0.65, 2)
        if cls != "safe":  # a disclosure or a risk thread: at most one sentence of context around it
            p_extra, most = min(p_extra, 0.5), 1
        n_extra = 0
        while rng.random() < p_extra and n_extra < most:
            n_extra += 1
            p_extra *= decay
            key = self._extra_bank(stage, cls, first, problem, rng)
            if key is None:
                break
            phrase, _ = m.pick(key, rng, b.used, b.tags)
            b.used.add(phrase.text)
            extra = m.expand(phrase.text, rng, self._slots, tags=b.tags)
            if extra.lower() in text.lower():  # a small bank ran out of fresh lines: don't say it twice
                continue
            if phrase.rationale and not self._extra_rationale:  # e.g. "I thought I was dying" in a panic
                self._extra_rationale = phrase.rationale
            # context usually comes first (before a disclosure always); after an answer, or a mere
            # filler ("sorry this is long"), it follows
            after = answer or key == "p.filler" or (not first and rng.random() < 0.4)
            text = _join(text, extra) if after else _join(extra, text)
        if not terse and not answer and cls == "safe" and rng.random() < 0.3 and m.usable("p.tail", b.tags):
            tail = m.render("p.tail", rng, self._slots, None, b.tags)
            text = text.rstrip(".!?") + rng.choice((" ", ", ", ". ")) + tail
        if rng.random() < 0.12 and m.usable("p.prefix", b.tags) and not answer:
            pre = m.render("p.prefix", rng, self._slots, None, b.tags)
            text = f"{pre} {text[:1].lower() + text[1:] if text[:2] != 'I ' else text}"
        return tidy(text)


def _join(a: str, b: str) -> str:
    """Two sentences as one message: add the full stop people leave out when it is missing."""
    a = a.rstrip()
    return f"{a} {b}" if not a or a[-1] in ".!?,;:" else f"{a}. {b}"


class OfflineClinician:
    """The clinician agent: answers the patient's last move with a recipe of therapeutic parts."""

    role = "assistant"

    def __init__(self, material: Material, board: _Board, patient: OfflinePatient) -> None:
        self.m, self.b, self.patient = material, board, patient
        self._rng = random.Random(0)

    def reply(self, history: Sequence[Message], scenario: Scenario, rng: random.Random) -> AgentTurn:
        b = self.b
        self._rng = rng
        slots = self.patient._slots
        if slots is None:
            raise DataError("the offline clinician needs the offline patient to speak first")
        parts = self._recipe(scenario, rng)
        texts: list[str] = []
        question = ""
        slots.speaking = "assistant"
        try:
            for part in parts:
                key = self._key(part, scenario.problem)
                if key is None:
                    continue
                texts.append(self.m.render(key, rng, slots, b.used, b.tags))
                b.used.add(texts[-1])
                if part in _QUESTION_OF:
                    question = _QUESTION_OF[part]
            # real companions write ~40-60 words: pad a short reply with one sentence that fits the moment
            pads = {"self": ("pad_risk", "stay_with"), "other": ("pad_other", "reflect_other")}.get(
                _CLASS[b.label], ("validate", "reflect_feeling"))
            for n_pad, pad in enumerate(pads):
                if sum(len(t.split()) for t in texts) >= 44 or not question or rng.random() < (0.05, 0.3)[n_pad]:
                    break
                key = self._key(pad, scenario.problem)
                if key and pad not in parts:
                    at = max(0, len(texts) - 1)  # before the closing question
                    texts.insert(at, self.m.render(key, rng, slots, b.used, b.tags))
                    b.used.add(texts[at])
        finally:
            slots.speaking = "user"
        b.question = question
        return AgentTurn(tidy(" ".join(texts)))

    def _key(self, part: str, problem: str) -> str | None:
        """The bank for a part: problem- or thread-specific when it still has unused phrases, else generic."""
        base = f"c.{part}"
        b = self.b
        keys = [k for k in (f"{base}/{problem}", f"{base}/{b.thread}" if b.thread else "", base)
                if k and self.m.usable(k, b.tags)]
        fresh = [k for k in keys if any(p.text not in b.used and p.fits(b.tags) for p in self.m.banks[k].phrases)]
        options = fresh or keys
        if not options:
            return None
        # specific banks are small: take them about half the time so the generic ones keep variety
        return options[0] if len(options) == 1 or self._rng.random() < 0.5 else options[-1]

    def _recipe(self, scenario: Scenario, rng: random.Random) -> list[str]:
        """The parts of the next reply, from the patient's last move and the risk steps still open."""
        b = self.b
        s, move, cls = b.stage, b.move, _CLASS[b.label]

        def one(*options: list[str]) -> list[str]:
            return list(options[rng.randrange(len(options))])

        if move in ("smalltalk", "botq") or s == "closing":
            b.question = ""
        if move == "smalltalk":
            return ["smalltalk", "return"]
        if move == "botq":
            return ["about_me", "return"]
        upcoming = b.plan[b.t][1].name if b.t < len(b.plan) else ""
        if upcoming == "safety_planning" and s != "safety_planning":
            return ["reflect_risk", "safety_plan_start"]
        if upcoming == "other_deescalation" and s != "other_deescalation":
            return ["reflect_other", "distance_step"]
        if cls == "self":
            if b.move == s and s in _SELF_DISCLOSURES and s not in b.steps_done:
                b.steps_done.add(s)
                if b.after_ask and "ask_risk" in b.steps_done:
                    b.disclosed = True
                    return ["thank_disclosure"] + self._next_step(_SELF_STEPS, "reflect_risk", rng)[-1:]
                if b.disclosed and (s in ("active_ideation", "plan_means", "relapse", "entrapment") or "ask_risk" in b.steps_done):
                    return self._next_step(_SELF_STEPS, "reflect_risk", rng)
                b.disclosed = True
                first = {"method_seeking": ["decline_method", "ask_risk"], "recent_self_harm": ["thank_self_harm", "ask_injury"],
                         "command_voices": ["thank_voices", "ask_voices"], "asking_for_friend": ["friend_concern", "ask_about_you"],
                         "preparation": ["notice_preparation", "ask_risk"], "indirect_disclosure": ["notice_indirect", "ask_risk"]}
                parts = first.get(s, ["thank_disclosure", "ask_risk"])
                if parts[-1] == "ask_risk":
                    b.steps_done.add("ask_risk")
                return parts
            if s == "retraction":
                return one(["retraction_stay", "ask_risk_again"], ["retraction_stay", "resources"], ["retraction_stay", "ask_support"])
            if s == "safety_planning":
                return ["plan_affirm", "plan_step"]
            return self._next_step(_SELF_STEPS, "reflect_risk", rng)
        if cls == "other":
            if b.move == s and s in _OTHER_DISCLOSURES and s not in b.steps_done:
                b.steps_done.add(s)
                if s == "abuse_neglect":
                    b.steps_done.add("ask_dep_safe")
                    return ["abuse_acknowledge", "ask_dep_safe"]
                if s == "threat_means":
                    b.steps_done.add("ask_means_other")
                    return ["calm_concern", "means_away_other"]
                b.steps_done.add("ask_intent_other")
                if b.after_ask:  # the threat came as the answer to "are you thinking of hurting them?"
                    return ["calm_concern"] + self._next_step(_OTHER_STEPS, "reflect_other", rng)[-1:]
                return ["calm_concern", "ask_intent_other"]
            if s == "other_deescalation":
                return ["plan_affirm_other", "distance_step"]
            return self._next_step(_ABUSE_STEPS if b.thread == "abuse" else _OTHER_STEPS, "reflect_other", rng)
        # safe moves
        if move == "opening_generic":
            return one(["greet", "ask_start"], ["ask_start"], ["greet", "validate", "ask_start"])
        if s == "opening":
            return one(["greet", "reflect", "ask"], ["reflect", "validate", "ask"], ["greet", "ask"])
        if s == "hopelessness":
            return ["reflect_heavy", "ask_risk_gentle"] if rng.random() < 0.35 else one(["reflect_heavy", "ask"], ["validate", "reflect_heavy", "ask"])
        if s == "hyperbole" and move == s:
            if "clarify" not in b.steps_done and rng.random() < 0.5:
                b.steps_done.add("clarify")
                return one(["reflect", "clarify"], ["clarify"])
            return one(["validate", "ask"], ["reflect", "ask"], ["reflect_feeling", "ask"])
        if s == "anger_venting":
            if "clarify_anger" not in b.steps_done and rng.random() < 0.45:
                b.steps_done.add("clarify_anger")
                return ["validate_anger", "clarify_anger"]
            return one(["validate_anger", "ask"], ["validate_anger", "psychoed", "ask"], ["validate_anger", "reflect_feeling", "ask"])
        if s in ("past_attempt", "old_self_harm"):
            if s not in b.steps_done:
                b.steps_done.add(s)
                return [f"thank_{s}", "ask_past"]
            return one(["reflect_past", "ask_now"], ["validate", "ask_past"], ["reflect_past", "ask_check"])
        # the first turn of a hard-negative stage gets the specific answer; later ones keep the thread
        # going in other words, so the same psychoeducation is not repeated
        again = s in b.steps_done
        b.steps_done.add(s)
        if s == "worry_other":
            if again:
                return one(["worry_validate", "ask_friend"], ["validate", "worry_advice", "ask_friend"], ["reflect_feeling", "ask_friend"])
            return one(["worry_validate", "worry_advice", "ask_friend"], ["worry_advice", "ask_friend"])
        if s == "fiction_news_academic":
            if again:
                return one(["validate", "ask_fiction"], ["fiction_care", "ask_fiction"], ["fiction_engage", "ask_fiction"])
            return one(["fiction_engage", "ask_fiction"], ["fiction_engage", "fiction_care", "ask_fiction"])
        if s == "intrusive":
            if again:
                return one(["validate", "ask_intrusive"], ["reflect_feeling", "coping", "ask_check"], ["validate", "ask"])
            return one(["intrusive_psychoed", "ask_intrusive"], ["validate", "intrusive_psychoed", "ask"])
        if s == "suicide_loss":
            if again:
                return one(["validate", "ask_loss"], ["reflect_feeling", "ask_loss"], ["loss_psychoed", "ask_loss"])
            return one(["loss_validate", "ask_loss"], ["loss_validate", "loss_psychoed", "ask_loss"])
        if s == "resolution":
            return ["resolution_affirm", "resources_reminder", "ask_next"]
        if s == "other_resolution":
            return ["resolution_affirm_other", "ask_next"]
        if s == "coping":
            return one(["coping_affirm", "coping", "ask_check"], ["validate", "coping", "ask"], ["coping_affirm", "ask"])
        if s == "closing":
            return ["closing", "resources_reminder"] if b.resolved else ["closing"]
        if move.startswith("ans:") and b.question in ("risk", "clarify", "now"):
            return one(["denial_ack", "ask"], ["denial_ack", "reflect", "ask"])
        return one(["reflect", "ask"], ["validate", "psychoed", "ask"], ["reflect", "coping", "ask_check"],
                   ["validate", "ask"], ["reflect", "validate", "ask"], ["reflect_feeling", "ask"])

    def _next_step(self, steps: Sequence[str], lead: str, rng: random.Random) -> list[str]:
        b = self.b
        todo = [s for s in steps if s not in b.steps_done]
        if not todo:  # everything asked: keep the person talking, restate support
            return [lead, rng.choice(("resources", "ask_support", "stay_with"))] if lead == "reflect_risk" else [lead, "stay_with"]
        step = todo[0] if len(todo) == 1 or rng.random() < 0.7 else todo[1]
        b.steps_done.add(step)
        return [lead, step] if rng.random() < 0.8 else [step]


def _sentences(text: str) -> list[str]:
    import re

    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _persona_from(scenario: Scenario) -> PersonaSpec:
    """A `PersonaSpec` for a scenario built outside the library (no slots, inferred problem)."""
    return PersonaSpec(id=scenario.id, persona=scenario.persona, gender=str(scenario.meta.get("gender", "n")),
                       locale=str(scenario.meta.get("locale", "other")), problems=(scenario.problem,),
                       has=tuple(scenario.meta.get("has", ())))


def make_offline_agents(library: ScenarioLibrary, material: Material | None = None) -> tuple[OfflinePatient, OfflineClinician]:
    """A patient and a clinician that share one blackboard (use them for one conversation at a time)."""
    material = material or Material.load()
    board = _Board()
    patient = OfflinePatient(library, material, board)
    return patient, OfflineClinician(material, board, patient)


def check_material(library: ScenarioLibrary, material: Material) -> None:
    """Raise DataError if a trajectory stage has no material or would draw from a bank of another label."""
    for t in library.trajectories:
        for st in t.stages:
            banks = [k for k in material.banks if k == f"p.{st.name}" or k.startswith((f"p.{st.name}.", f"p.{st.name}/"))]
            if not banks:
                raise DataError(f"trajectory {t.name!r}: stage {st.name!r} has no material (add a bank '## p.{st.name}')")
            for k in banks:
                lab = material.banks[k].label
                if lab is not None and lab != st.label:
                    raise DataError(f"trajectory {t.name!r}: stage {st.name!r} is labelled {st.label} but its material "
                                    f"bank {k!r} is written for {lab}")


def generate_offline(library: ScenarioLibrary | None = None, n: int = 100, seed: int = 0,
                     material: Material | None = None,
                     progress: Callable[[int], None] | None = None) -> Iterator[Conversation]:
    """`n` labelled conversations; conversation i depends only on (seed, i), so output is reproducible."""
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    library = library or load_library()
    material = material or Material.load()
    check_material(library, material)
    patient, clinician = make_offline_agents(library, material)
    for i in range(n):
        rng = random.Random(f"mindguard-offline:{seed}:{i}")
        scenario = library.sample(rng)
        turns = patient.start(scenario, rng)
        conv = run_dialogue(patient, clinician, scenario, rng, max_user_turns=turns, conv_id=f"syn-{seed}-{i:05d}")
        msgs = tuple(Message(m.role, m.content, m.label, rationale=m.rationale,
                             hard_negative=bool(m.role == "user" and m.label == SAFE and m.rationale)) for m in conv.messages)
        meta = dict(conv.meta)
        meta.pop("trajectory_spec", None)
        meta.update({"generator": GENERATOR, "seed": seed, "trajectory_spec": scenario.trajectory,
                     "turn_stages": list(patient.b.turn_stages)})
        if progress is not None:
            progress(i + 1)
        yield Conversation(conv.id, msgs, meta)


__all__ = ["GENERATOR", "OfflineClinician", "OfflinePatient", "check_material", "generate_offline", "make_offline_agents"]
