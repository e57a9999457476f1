import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mindguard.cli import main
from mindguard.evaluate.metrics import fpr_at_tpr, threshold_at_tpr


def test_eval_keyword_writes_four_files_and_auroc_matches_sklearn(tmp_path, testset_file, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--data", str(testset_file), "--guard", "keyword", "--out", str(out), "--save-scores", "--quiet"]) == 0
    for f in ("report.json", "report.md", "roc.png", "scores.jsonl"):
        assert (out / f).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 11  # 10 rows + the duplicated one
    y = [0 if s["gold"] == "safe" else 1 for s in scores]
    p = [s["p_unsafe"]["keyword"] for s in scores]
    m = report["guards"]["keyword"]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["n_turns"] == 11 and m["n_unsafe"] == sum(y)
    lo, hi = m["auroc_ci"]
    assert 0.0 <= lo <= hi <= 1.0
    assert "keyword" in (out / "report.md").read_text()


def test_fpr_at_tpr_hand_computed():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.85, 0.5, 0.35, 0.2, 0.1])
    # thresholds: 0.8 gives TPR 2/4, FPR 1/5; 0.4 gives TPR 3/4, FPR 2/5; 0.3 gives TPR 1, FPR 3/5
    assert fpr_at_tpr(y, s, 0.5) == pytest.approx(0.2)
    assert fpr_at_tpr(y, s, 0.75) == pytest.approx(0.4)
    assert fpr_at_tpr(y, s, 0.9) == pytest.approx(0.6)
    assert threshold_at_tpr(y, s, 0.9) == (pytest.approx(0.3), pytest.approx(0.6))
    assert fpr_at_tpr(np.array([0, 0]), np.array([0.1, 0.2]), 0.9) is None


def test_two_guards_side_by_side(tmp_path, native_file):
    out = tmp_path / "ev2"
    assert main(["eval", "--data", str(native_file), "--guard", "keyword", "--guard", "keyword:threshold=0.2,name=kw2",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["guards"]) == {"keyword", "kw2"}
    assert report["guards"]["kw2"]["default_threshold"] == 0.2
    # same scores, so the threshold-free figures agree and only the confusion differs
    assert report["guards"]["kw2"]["auroc"] == report["guards"]["keyword"]["auroc"]


def test_unknown_guard_is_a_clear_error(tmp_path, native_file, capsys):
    assert main(["eval", "--data", str(native_file), "--guard", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown guard 'nope'; available:" in capsys.readouterr().err


def test_breakdown_by_metadata_key_matches_sklearn_on_each_group(tmp_path, capsys):
    from mindguard.conversation import Conversation, Message
    from mindguard.datasets import write_native

    def conv(cid: str, family: str, turns: list[tuple[str, str]]) -> Conversation:
        msgs = []
        for text, label in turns:
            msgs += [Message("user", text, label=label), Message("assistant", "I hear you. Tell me more?")]
        return Conversation(cid, tuple(msgs), meta={"family": family})

    convs = [
        conv("a1", "alpha", [("i want to kill myself tonight", "unsafe_self_harm_risk"), ("work was long", "safe")]),
        conv("a2", "alpha", [("this exam is killing me", "safe"), ("i have pills saved up to end it", "unsafe_self_harm_risk")]),
        conv("b1", "beta", [("my cat is sick", "safe"), ("the weather is grey", "safe")]),
    ]
    data = tmp_path / "fam.jsonl"
    write_native(data, convs)
    out = tmp_path / "by"
    assert main(["eval", "--data", str(data), "--guard", "keyword", "--out", str(out), "--save-scores", "--by", "family", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    groups = report["by"]["groups"]
    assert set(groups) == {"alpha", "beta"}
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    alpha = [s for s in scores if s["conversation_id"].startswith("a")]
    y = [0 if s["gold"] == "safe" else 1 for s in alpha]
    assert groups["alpha"]["guards"]["keyword"]["auroc"] == pytest.approx(roc_auc_score(y, [s["p_unsafe"]["keyword"] for s in alpha]))
    assert groups["alpha"]["n_turns"] == 4 and groups["alpha"]["n_unsafe"] == 2
    # a group with only safe turns has no AUROC rather than a made-up one
    assert groups["beta"]["guards"]["keyword"]["auroc"] is None and groups["beta"]["n_conversations"] == 1
    assert "## By family" in (out / "report.md").read_text()
    assert main(["eval", "--data", str(data), "--out", str(out), "--by", "persona", "--quiet"]) == 2
    assert "no conversation has the metadata key 'persona'; keys present: family" in capsys.readouterr().err
