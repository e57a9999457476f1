import json

import pytest

from mindguard.cli import main
from mindguard.datasets import load_conversations, save_conversations
from mindguard.datasets.testset import read_testset_rows, to_testset_records
from mindguard.errors import DataError


def test_native_roundtrip(tmp_path, conversations):
    p = tmp_path / "n.jsonl"
    save_conversations(p, conversations)
    back = load_conversations(p)
    assert [c.to_dict() for c in back] == [c.to_dict() for c in conversations]


def test_testset_grouping_recovers_conversations(testset_file, conversations):
    convs = load_conversations(testset_file)
    assert len(convs) == 3
    got = sorted(tuple((m.role, m.content, m.label) for m in c.messages) for c in convs)
    want = sorted(tuple((m.role, m.content, m.label) for m in c.messages) for c in conversations)
    assert got == want


def test_shared_first_turns_make_two_conversations(tmp_path):
    a = [{"role": "user", "content": "hi"}]
    rows = [
        {"prompt": a, "label": "safe"},
        {"prompt": a + [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "bad day"}], "label": "safe"},
        {"prompt": a + [{"role": "assistant", "content": "hey there"}, {"role": "user", "content": "i want to die"}],
         "label": "unsafe_self_harm_risk"},
    ]
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs = load_conversations(p)
    assert len(convs) == 2
    assert all(c.messages[0].label == "safe" for c in convs)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_testset_to_native_to_testset_is_lossless(tmp_path, testset_file, suffix):
    original = [(r.prompt, r.label) for r in read_testset_rows(testset_file)]
    convs = load_conversations(testset_file)
    native = tmp_path / "n.jsonl"
    save_conversations(native, convs)
    out = tmp_path / f"back{suffix}"
    save_conversations(out, load_conversations(native), fmt="testset")
    again = [(r.prompt, r.label) for r in read_testset_rows(out)]
    assert again == original  # same rows, same order, duplicate kept


def test_native_to_testset_rows_match_labelled_turns(conversations):
    recs = to_testset_records(conversations)
    assert len(recs) == sum(len(c.labelled_turns()) for c in conversations)
    assert all(r["prompt"][-1]["content"] == r["user_message"] for r in recs)


def test_devset_style_labels_list(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"id": "d1", "messages": [{"role": "user", "content": "hi"}], "labels": ["safe"], "notes": "n"}) + "\n")
    (c,) = load_conversations(p)
    assert c.messages[0].label == "safe" and c.meta["notes"] == "n"


@pytest.mark.parametrize("content,msg", [
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}]}\n{"id": broken\n', ":2: malformed JSON"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x", "label": "danger"}]}\n', "unknown label 'danger'; allowed: safe"),
    ("", "the file is empty"),
    ('{"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "label": "safe"}\n',
     "must end with the user turn"),
])
def test_bad_input_errors(tmp_path, content, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=msg):
        load_conversations(p)


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "messages": [}\n')
    assert main(["data", "stats", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mindguard: error:") and "bad.jsonl:1" in err and "\n" not in err
    assert main(["data", "stats", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_data_stats_prints_counts(native_file, capsys):
    assert main(["data", "stats", str(native_file), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["conversations"] == 3
    assert stats["labels"] == {"safe": 6, "unsafe_self_harm_risk": 2, "unsafe_harm_to_others": 2}


def test_data_stats_reports_annotator_agreement(tmp_path, capsys):
    rows = [{"prompt": [{"role": "user", "content": f"m{i}"}], "label": "safe",
             "annotator_labels": {"annotator_1": "safe", "annotator_2": "safe" if i % 3 else "unsafe_self_harm_risk"}}
            for i in range(6)]
    p = tmp_path / "v.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "stats", str(p), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["annotator_agreement"]["unanimous_share"] == pytest.approx(4 / 6, abs=1e-3)


def test_label_agreement_counts_and_kappa(tmp_path, conversations, capsys):
    from mindguard.datasets import write_native
    from mindguard.datasets.stats import label_agreement

    relabelled = [conversations[0].with_labels({6: "safe"}), *conversations[1:]]
    res = label_agreement(conversations, relabelled)
    assert res["turns"] == 10 and res["agreement"] == 0.9
    assert res["disagreements"] == [{"id": "c-work", "turn": 3, "first": "unsafe_self_harm_risk", "second": "safe"}]
    assert 0.0 < res["cohen_kappa"] < 1.0
    write_native(tmp_path / "a.jsonl", conversations)
    write_native(tmp_path / "b.jsonl", relabelled)
    assert main(["data", "agreement", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 0
    assert "agreement 90.0%" in capsys.readouterr().out


def test_data_check_lists_every_problem_of_an_authored_file(tmp_path, capsys):
    good = "=== a-1\nfamily: f\nscenario: s\npersona: p\ntrajectory: never_risky\nU safe | hi\nA | hello\nU self | i want to die || current wish\n"
    bad = "=== b-1\nfamily: f\nscenario: s\npersona: p\ntrajectory: nope\nU self | no reason given\nU safe | two users in a row\n"
    (tmp_path / "good.txt").write_text(good)
    (tmp_path / "bad.txt").write_text(bad)
    assert main(["data", "check", str(tmp_path / "good.txt")]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "bad.txt")]) == 2
    err = capsys.readouterr().err
    assert "needs a rationale" in err and "unknown trajectory 'nope'" in err and "two user messages in a row" in err
