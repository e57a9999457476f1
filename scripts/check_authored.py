"""Check an authored-conversation source file (the .txt format in data/authored/) and print stats.

Usage: python3 scripts/check_authored.py data/authored/FAMILY.txt [more files]
"""
import re
import sys
from collections import Counter

CODES = {"safe": "safe", "hn": "safe", "self": "unsafe_self_harm_risk", "other": "unsafe_harm_to_others"}
TRAJ = {
    "never_risky", "venting_hyperbole", "past_attempt_processed", "old_self_harm_processed",
    "worry_about_other", "fiction_news_academic", "intrusive_thoughts_egodystonic",
    "escalation_to_passive_ideation", "escalation_to_plan_or_means", "recent_self_harm",
    "method_seeking_curiosity", "asking_for_a_friend", "retraction_after_disclosure",
    "anger_to_specific_threat", "ongoing_abuse_or_neglect", "deescalation_after_safety_plan",
    "late_indirect_disclosure", "command_voices", "preparation_goodbye", "anger_venting_no_intent",
}
HEAD = ("family", "scenario", "persona", "trajectory", "notes")


def parse(path):
    convs, cur, errors = [], None, []
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("=== "):
            cur = {"id": line[4:].strip(), "meta": {}, "messages": [], "line": n}
            convs.append(cur)
            continue
        if cur is None:
            errors.append(f"{path}:{n}: text before the first '=== id' line")
            continue
        m = re.match(r"^(family|scenario|persona|trajectory|notes):\s*(.*)$", line)
        if m and not cur["messages"]:
            cur["meta"][m.group(1)] = m.group(2).strip()
            continue
        m = re.match(r"^A \| (.+)$", line)
        if m:
            cur["messages"].append({"role": "assistant", "content": m.group(1).strip()})
            continue
        m = re.match(r"^U (safe|hn|self|other) \| (.+)$", line)
        if m:
            code, rest = m.groups()
            text, _, why = rest.partition(" || ")
            msg = {"role": "user", "content": text.strip(), "label": CODES[code]}
            if code == "hn":
                msg["hard_negative"] = True
            if why.strip():
                msg["rationale"] = why.strip()
            elif code in ("hn", "self", "other"):
                errors.append(f"{path}:{n}: '{code}' turn needs a rationale after ' || '")
            if not text.strip():
                errors.append(f"{path}:{n}: empty user message")
            cur["messages"].append(msg)
            continue
        errors.append(f"{path}:{n}: cannot parse line: {line[:80]!r}")
    seen = set()
    for c in convs:
        where = f"{path}:{c['line']} ({c['id']})"
        if c["id"] in seen:
            errors.append(f"{where}: duplicate id")
        seen.add(c["id"])
        for k in ("family", "scenario", "persona", "trajectory"):
            if not c["meta"].get(k):
                errors.append(f"{where}: missing '{k}:' header")
        for t in c["meta"].get("trajectory", "").split(","):
            if t.strip() and t.strip() not in TRAJ:
                errors.append(f"{where}: unknown trajectory {t.strip()!r}")
        msgs = c["messages"]
        if not msgs or msgs[0]["role"] != "user":
            errors.append(f"{where}: must start with a user turn")
        for a, b in zip(msgs, msgs[1:]):
            if a["role"] == b["role"]:
                errors.append(f"{where}: two {a['role']} messages in a row")
    return convs, errors


def main(paths):
    allc, allerr = [], []
    for p in paths:
        c, e = parse(p)
        allc += c
        allerr += e
    for e in allerr:
        print("ERROR", e)
    users = [m for c in allc for m in c["messages"] if m["role"] == "user"]
    labels = Counter(m["label"] for m in users)
    hn_convs = sum(any(m.get("hard_negative") for m in c["messages"]) for c in allc)
    risky = sum(any(m.get("label", "safe") != "safe" for m in c["messages"]) for c in allc)
    words = sorted(len(m["content"].split()) for m in users)
    awords = sorted(len(m["content"].split()) for c in allc for m in c["messages"] if m["role"] == "assistant")
    traj = Counter(t.strip() for c in allc for t in c["meta"].get("trajectory", "").split(",") if t.strip())
    # sentences (>5 words) that appear in more than one conversation
    owner, shared = {}, 0
    for c in allc:
        for m in c["messages"]:
            if m["role"] != "user":
                continue
            for s in re.split(r"(?<=[.!?])\s+", m["content"].lower()):
                s = re.sub(r"\W+", " ", s).strip()
                if len(s.split()) > 5:
                    if owner.setdefault(s, c["id"]) != c["id"]:
                        shared += 1
    n = max(len(users), 1)
    print(f"conversations={len(allc)} user_turns={len(users)} per_conv={len(users)/max(len(allc),1):.1f}")
    print("labels:", dict(labels), f"unsafe_share={(n - labels['safe'])/n:.3f}")
    print(f"convs_with_hard_negatives={hn_convs} convs_with_risk={risky}")
    if words:
        print(f"user words median={words[len(words)//2]} p90={words[int(len(words)*.9)]}")
    if awords:
        print(f"assistant words median={awords[len(awords)//2]}")
    print("trajectories:", dict(traj))
    print(f"user sentences (>5 words) shared between conversations: {shared}")
    print("OK" if not allerr else f"{len(allerr)} ERRORS")
    return 1 if allerr else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
