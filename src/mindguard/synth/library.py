"""The scenario library: personas, presenting problems and risk trajectories, kept as JSON data.

A *scenario* is one persona with one presenting problem following one risk trajectory (a sequence
of stages, each with the label its user turns carry). The packaged library lives in
`synth/scenarios/*.json` (`personas.json`, `problems.json`, `trajectories.json`); a user file given
with `--scenarios` may hold any of those three sections and replaces the packaged ones it names.
`ScenarioLibrary.sample(rng)` draws a compatible combination (a trajectory by weight, then a
persona able to live it, then one of that persona's problems the trajectory accepts), so the
offline engine and the LLM-driven generator draw from the same space.

Example:
    >>> lib = load_library()
    >>> s = lib.sample(random.Random(0))
    >>> s.stages[0].label in ("safe", "unsafe_self_harm_risk", "unsafe_harm_to_others")
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..taxonomy import LABELS
from ._agents import Persona, Scenario, Stage

SECTIONS = ("personas", "problems", "trajectories")
PERSONA_STYLES = ("terse", "lowercase", "no_apostrophes", "typos", "abbreviations", "slang", "emoji", "non_native",
                  "rambling", "run_on", "formal", "swearing")
LOCALES = ("us", "uk", "ie", "au", "nz", "ca", "in", "za", "ng", "ph", "sg", "other")


@dataclass(frozen=True)
class PersonaSpec:
    """A persona as the library stores it: the shared `Persona` plus what the engine needs to fill slots."""

    id: str
    persona: Persona
    gender: str
    locale: str
    problems: tuple[str, ...]
    has: tuple[str, ...] = ()
    slots: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProblemSpec:
    """A presenting problem; `requires_any` lists persona attributes (kid, elder, ...) it needs."""

    id: str
    title: str
    requires_any: tuple[str, ...] = ()
    rivals: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrajectorySpec:
    """A risk trajectory: stages with labels, the taxonomy trajectory names it covers, a sampling weight."""

    name: str
    family: str
    tags: tuple[str, ...]
    stages: tuple[Stage, ...]
    weight: float = 1.0
    problems: tuple[str, ...] = ()  # empty: any problem
    requires_any: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ScenarioLibrary:
    """Personas, problems and trajectories, with the compatible (persona, problem) pairs of each trajectory."""

    personas: tuple[PersonaSpec, ...]
    problems: tuple[ProblemSpec, ...]
    trajectories: tuple[TrajectorySpec, ...]

    def __post_init__(self) -> None:
        problem_ids = {p.id for p in self.problems}
        for ps in self.personas:
            for pr in ps.problems:
                if pr not in problem_ids:
                    raise DataError(f"persona {ps.id!r} names unknown problem {pr!r}")
        for t in self.trajectories:
            for pr in t.problems:
                if pr not in problem_ids:
                    raise DataError(f"trajectory {t.name!r} names unknown problem {pr!r}")
            if not self.pairs(t):
                raise DataError(f"trajectory {t.name!r} has no persona that can live it (check its problems and "
                                "requires_any against the personas)")

    def persona(self, persona_id: str) -> PersonaSpec:
        for p in self.personas:
            if p.id == persona_id:
                return p
        raise DataError(f"no persona {persona_id!r} in the scenario library")

    def problem(self, problem_id: str) -> ProblemSpec:
        for p in self.problems:
            if p.id == problem_id:
                return p
        raise DataError(f"no problem {problem_id!r} in the scenario library")

    def pairs(self, t: TrajectorySpec) -> list[tuple[PersonaSpec, ProblemSpec]]:
        """Every (persona, problem) that can follow trajectory `t`."""
        out = []
        probs = {p.id: p for p in self.problems}
        for ps in self.personas:
            if t.requires_any and not set(t.requires_any) & set(ps.has):
                continue
            for pid in ps.problems:
                pr = probs[pid]
                if t.problems and pid not in t.problems:
                    continue
                if pr.requires_any and not set(pr.requires_any) & set(ps.has):
                    continue
                out.append((ps, pr))
        return out

    def scenario(self, persona: PersonaSpec, problem: ProblemSpec, trajectory: TrajectorySpec) -> Scenario:
        """The `Scenario` for one combination (its id names all three)."""
        meta: dict[str, Any] = {"persona_id": persona.id, "locale": persona.locale}
        if len(trajectory.tags) != 1 or trajectory.tags[0] != trajectory.name:
            meta["trajectory"] = list(trajectory.tags)
            meta["trajectory_spec"] = trajectory.name
        return Scenario(id=f"{trajectory.name}.{problem.id}.{persona.id}", family=trajectory.family,
                        persona=persona.persona, problem=problem.id, trajectory=trajectory.name,
                        stages=trajectory.stages, meta=meta)

    def sample(self, rng: random.Random) -> Scenario:
        """A random compatible scenario: trajectory by weight, then persona, then problem."""
        t = rng.choices(self.trajectories, weights=[x.weight for x in self.trajectories])[0]
        pairs = self.pairs(t)
        persona_ids = sorted({ps.id for ps, _ in pairs})
        pid = persona_ids[rng.randrange(len(persona_ids))]
        mine = [pp for pp in pairs if pp[0].id == pid]
        ps, pr = mine[rng.randrange(len(mine))]
        return self.scenario(ps, pr, t)

    def sample_scenarios(self, n: int, seed: int) -> list[Scenario]:
        """`n` scenarios drawn reproducibly from `seed` (one independent stream per index)."""
        return [self.sample(random.Random(f"mindguard-scenario:{seed}:{i}")) for i in range(n)]


def load_library(path: str | Path | None = None) -> ScenarioLibrary:
    """The packaged library, with the sections present in the JSON file at `path` replacing it."""
    sections: dict[str, Any] = {}
    root = resources.files("mindguard.synth") / "scenarios"
    for name in SECTIONS:
        doc = _json(root.joinpath(f"{name}.json").read_text(encoding="utf-8"), f"scenarios/{name}.json")
        sections[name] = doc[name]
    where = {name: f"scenarios/{name}.json" for name in SECTIONS}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: no such scenarios file")
        doc = _json(p.read_text(encoding="utf-8"), str(p))
        found = [s for s in SECTIONS if s in doc]
        if not found:
            raise DataError(f"{p}: a scenarios file needs at least one of the sections {', '.join(SECTIONS)}")
        unknown = sorted(set(doc) - set(SECTIONS) - {"version", "notes"})
        if unknown:
            raise DataError(f"{p}: unknown section {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
        for s in found:
            sections[s] = doc[s]
            where[s] = str(p)
    _check_unique(sections, where)
    return ScenarioLibrary(
        personas=tuple(_persona(x, where["personas"], i) for i, x in enumerate(_list(sections["personas"], where["personas"], "personas"))),
        problems=tuple(_problem(x, where["problems"], i) for i, x in enumerate(_list(sections["problems"], where["problems"], "problems"))),
        trajectories=tuple(_trajectory(x, where["trajectories"], i)
                           for i, x in enumerate(_list(sections["trajectories"], where["trajectories"], "trajectories"))),
    )


# -- parsing helpers ------------------------------------------------------------------------------
def _json(text: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{source}: expected a JSON object with sections {', '.join(SECTIONS)}")
    return doc


def _list(value: Any, source: str, section: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: section {section!r} must be a non-empty list")
    return value


def _check_unique(sections: Mapping[str, Any], where: Mapping[str, str]) -> None:
    for section, key in (("personas", "id"), ("problems", "id"), ("trajectories", "name")):
        seen: set[str] = set()
        for x in sections[section] if isinstance(sections[section], list) else []:
            k = x.get(key) if isinstance(x, dict) else None
            if isinstance(k, str):
                if k in seen:
                    raise DataError(f"{where[section]}: {section[:-1]} {key} {k!r} appears twice")
                seen.add(k)


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if name not in obj:
        if default is ...:
            raise DataError(f"{where}: missing field {name!r}")
        return default
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} must be {names}, got {type(value).__name__}")
    return value


def _strings(obj: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = _field(obj, name, list, where, [])
    if not all(isinstance(v, str) and v for v in value):
        raise DataError(f"{where}: field {name!r} must be a list of non-empty strings")
    return tuple(value)


def _persona(x: Any, source: str, i: int) -> PersonaSpec:
    where = f"{source}: persona #{i + 1}"
    if not isinstance(x, dict):
        raise DataError(f"{where}: must be an object")
    pid = _field(x, "id", str, where)
    where = f"{source}: persona {pid!r}"
    age = _field(x, "age", int, where)
    if not 10 <= age <= 110:
        raise DataError(f"{where}: age {age} is out of range 10-110")
    style = _strings(x, "style", where)
    bad = [s for s in style if s not in PERSONA_STYLES]
    if bad:
        raise DataError(f"{where}: unknown style {bad[0]!r}; allowed: {', '.join(PERSONA_STYLES)}")
    gender = _field(x, "gender", str, where, "n")
    if gender not in ("f", "m", "n"):
        raise DataError(f"{where}: gender must be 'f', 'm' or 'n', got {gender!r}")
    locale = _field(x, "locale", str, where, "other")
    if locale not in LOCALES:
        raise DataError(f"{where}: unknown locale {locale!r}; allowed: {', '.join(LOCALES)}")
    problems = _strings(x, "problems", where)
    if not problems:
        raise DataError(f"{where}: needs at least one problem")
    slots = _field(x, "slots", dict, where, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in slots.items()):
        raise DataError(f"{where}: 'slots' must map names to strings")
    persona = Persona(name=_field(x, "name", str, where), age=age, situation=_field(x, "situation", str, where),
                      culture=_field(x, "culture", str, where, ""), style=style)
    return PersonaSpec(pid, persona, gender, locale, problems, _strings(x, "has", where), dict(slots))


def _problem(x: Any, source: str, i: int) -> ProblemSpec:
    where = f"{source}: problem #{i + 1}"
    if not isinstance(x, dict):
        raise DataError(f"{where}: must be an object")
    pid = _field(x, "id", str, where)
    where = f"{source}: problem {pid!r}"
    return ProblemSpec(pid, _field(x, "title", str, where, pid), _strings(x, "requires_any", where), _strings(x, "rivals", where))


def _trajectory(x: Any, source: str, i: int) -> TrajectorySpec:
    where = f"{source}: trajectory #{i + 1}"
    if not isinstance(x, dict):
        raise DataError(f"{where}: must be an object")
    name = _field(x, "name", str, where)
    where = f"{source}: trajectory {name!r}"
    raw_stages = _field(x, "stages", list, where)
    if not raw_stages:
        raise DataError(f"{where}: needs at least one stage")
    stages = []
    for k, s in enumerate(raw_stages):
        sw = f"{where}, stage #{k + 1}"
        if not isinstance(s, dict):
            raise DataError(f"{sw}: must be an object")
        label = _field(s, "label", str, sw)
        label = {"self": LABELS[1], "other": LABELS[2]}.get(label, label)
        if label not in LABELS:
            raise DataError(f"{sw}: unknown label {label!r}; allowed: {', '.join(LABELS)}")
        lo = _field(s, "min_turns", int, sw, 1)
        hi = _field(s, "max_turns", int, sw, lo)
        if lo < 0 or hi < lo:
            raise DataError(f"{sw}: need 0 <= min_turns <= max_turns, got {lo}..{hi}")
        stages.append(Stage(_field(s, "name", str, sw), label, lo, hi, _field(s, "description", str, sw, "")))
    if sum(s.max_turns for s in stages) < 1:
        raise DataError(f"{where}: its stages allow no user turn")
    weight = _field(x, "weight", (int, float), where, 1.0)
    if weight <= 0:
        raise DataError(f"{where}: weight must be positive")
    return TrajectorySpec(name, _field(x, "family", str, where, "synthetic"), _strings(x, "tags", where) or (name,),
                          tuple(stages), float(weight), _strings(x, "problems", where), _strings(x, "requires_any", where),
                          _field(x, "description", str, where, ""))


def scenario_summary(library: ScenarioLibrary) -> dict[str, Any]:
    """Counts for docs and `--list`: personas, problems, trajectories and the labels their stages carry."""
    labels: dict[str, int] = {lab: 0 for lab in LABELS}
    for t in library.trajectories:
        for s in t.stages:
            labels[s.label] += 1
    return {"personas": len(library.personas), "problems": len(library.problems),
            "trajectories": len(library.trajectories), "stage_labels": labels,
            "combinations": sum(len(library.pairs(t)) for t in library.trajectories)}


__all__: Sequence[str] = ("PersonaSpec", "ProblemSpec", "ScenarioLibrary", "TrajectorySpec", "load_library",
                          "scenario_summary")
