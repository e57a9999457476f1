"""The shipped corpus: every file validates, sizes meet the brief, no leakage across splits, and
the data card's table matches what `mindguard data stats` counts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mindguard.datasets import load_conversations
from mindguard.datasets.corpus import load_authored_dir, long_sentences
from mindguard.datasets.stats import corpus_stats

DATA = Path(__file__).resolve().parent.parent / "data"


def card_rows() -> dict[str, list[int]]:
    """`| file | conversations | user turns | safe | self-harm | harm to others |` rows of data/README.md."""
    rows = {}
    for line in (DATA / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*`([\w./-]+)`\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|", line)
        if m:
            rows[m.group(1)] = [int(x.replace(",", "")) for x in m.groups()[1:]]
    return rows


def test_authored_sources_parse_and_meet_the_size_brief():
    convs = load_authored_dir(DATA / "authored")
    turns = sum(len(c.user_turns()) for c in convs)
    assert len(convs) >= 400 and turns >= 4000
    stats = corpus_stats(convs)
    assert stats["unsafe_share"] >= 0.12
    assert stats["conversations_with_hard_negatives"] >= 0.3 * len(convs)
    # every unsafe and every hard-negative turn carries a rationale
    for c in convs:
        for m in c.user_turns():
            if m.label != "safe" or m.hard_negative:
                assert m.rationale, f"{c.id}: {m.content!r} has no rationale"


@pytest.mark.parametrize("name", sorted(card_rows()))
def test_data_card_matches_stats(name):
    stats = corpus_stats(load_conversations(DATA / name))
    labels = stats["labels"]
    got = [stats["conversations"], stats["user_turns"], labels["safe"], labels["unsafe_self_harm_risk"], labels["unsafe_harm_to_others"]]
    assert got == card_rows()[name]


def test_card_lists_every_jsonl_file():
    assert set(card_rows()) >= {p.name for p in DATA.glob("*.jsonl")}


def test_no_user_turn_of_more_than_five_words_in_both_splits():
    train = load_conversations(DATA / "authored_train.jsonl")
    val = load_conversations(DATA / "authored_val.jsonl")

    def turns(convs):
        return {re.sub(r"\s+", " ", m.content.strip().lower()) for c in convs for m in c.user_turns() if len(m.content.split()) > 5}

    assert not turns(train) & turns(val)
    shared_sentences = set().union(*map(long_sentences, train)) & set().union(*map(long_sentences, val))
    assert not shared_sentences
    assert not {c.meta.get("persona") for c in train} & {c.meta.get("persona") for c in val}
    assert not {c.id for c in train} & {c.id for c in val}
