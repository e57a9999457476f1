"""The embedded encoder guard on a tiny randomly initialised BERT (built here, same tokenizer as
MiniLM): training, save/load, batch vs streaming agreement, evidence, operating points, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mindguard.conversation import Conversation, Message
from mindguard.errors import MindGuardError
from mindguard.guards import load_guard
from mindguard.guards.encoder import EncoderConfig, EncoderModel, resolve_base
from mindguard.train.encoder import TrainConfig, train_encoder

from .conftest import make_conversations


def build_tiny_base(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(path)
    src = Path(resolve_base("minilm"))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, path / f)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains far faster on one thread than on contended two
    try:
        return _train_tiny(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("enc")
    base = build_tiny_base(root / "base")
    convs = make_conversations()
    meta = train_encoder(convs * 4, convs, root / "model", TrainConfig(epochs=2, batch_turns=8, lr_encoder=1e-3),
                         EncoderConfig(base=str(base), finetune_layers=1, state_size=16), progress=False, log=lambda *a: None)
    assert meta["validation"]["n_turns"] == 10
    return root / "model"


def test_model_directory_round_trip(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["format"] == "mindguard-encoder"
    assert set(cfg["calibration"]["operating_points"]) == {"tpr90", "tpr95", "default"}
    a, b = EncoderModel.load(tiny_model), EncoderModel.load(tiny_model)
    x = a.encode_pairs([("i want to die", "how are you?")])
    assert torch.allclose(x, b.encode_pairs([("i want to die", "how are you?")]))


def test_training_learns_the_tiny_set(tiny_model):
    guard = load_guard(f"encoder:model={tiny_model},operating_point=tpr95")
    conv = make_conversations()[0]
    res = guard.assess_conversation(conv)
    assert [r.message_index for r in res] == conv.user_turn_indices()
    for r in res:
        assert abs(sum(r.probabilities.values()) - 1.0) < 1e-5
        assert r.p_unsafe == pytest.approx(r.probabilities["unsafe_self_harm_risk"] + r.probabilities["unsafe_harm_to_others"])
    # at the 95 %-recall threshold chosen on this very data, its unsafe turns must be flagged
    assert res[-1].flagged and res[-2].flagged


def test_streaming_session_matches_batch_and_encodes_one_pair_per_turn(tiny_model, monkeypatch):
    guard = load_guard(f"encoder:model={tiny_model},explain=false")
    conv = make_conversations()[0]
    batch = guard.assess_conversation(conv)
    guard._cache.data.clear()
    calls: list[int] = []
    real = guard.model.encode_pairs
    monkeypatch.setattr(guard.model, "encode_pairs", lambda pairs, **k: calls.append(len(pairs)) or real(pairs, **k))
    session = guard.session()
    streamed = [a for m in conv.messages if (a := session.add(m.role, m.content)) is not None]
    assert calls == [1] * len(streamed)  # constant work per new user turn
    for s, b in zip(streamed, batch):
        assert s.p_unsafe == pytest.approx(b.p_unsafe, abs=1e-5)
        assert s.message_index == b.message_index


def test_context_changes_the_verdict_on_a_short_reply(tiny_model):
    guard = load_guard(f"encoder:model={tiny_model}")
    conv = make_conversations()[0]
    with_context = guard.assess_conversation(conv)[-1].p_unsafe
    alone = guard.assess([Message("user", "yeah")]).p_unsafe
    assert with_context != pytest.approx(alone)


def test_evidence_points_at_messages_of_the_conversation(tiny_model):
    guard = load_guard(f"encoder:model={tiny_model},operating_point=0.01")
    conv = make_conversations()[0]
    last = guard.assess_conversation(conv)[-1]
    assert last.flagged and last.evidence
    for ev in last.evidence:
        assert ev.text in conv.messages[ev.message_index].content


def test_operating_point_and_model_errors(tiny_model, tmp_path):
    with pytest.raises(MindGuardError, match="unknown operating point 'tpr99'"):
        load_guard(f"encoder:model={tiny_model},operating_point=tpr99")
    with pytest.raises(MindGuardError, match="does not exist"):
        load_guard(f"encoder:model={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MindGuardError, match="not a MindGuard encoder model"):
        load_guard(f"encoder:model={tmp_path / 'empty'}")


def test_assess_cli_reads_stdin_and_reports_errors(tiny_model):
    conv = {"messages": [{"role": "user", "content": "i can't do this anymore"},
                         {"role": "assistant", "content": "I'm here. What's going on?"},
                         {"role": "user", "content": "i have the pills right here"}]}
    cmd = [sys.executable, "-m", "mindguard", "assess", "--guard", f"encoder:model={tiny_model}", "--json"]
    out = subprocess.run(cmd, input=json.dumps(conv), capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    assert [t["turn"] for t in res["turns"]] == [0, 1]
    for bad, msg in (("", "no input"), ('{"messages": []}', "is empty"),
                     ('{"messages": [{"role": "assistant", "content": "hi"}]}', "no user turn")):
        r = subprocess.run(cmd, input=bad, capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--operating-point", "tpr99"], input=json.dumps(conv), capture_output=True, text=True)
    assert r.returncode == 2 and "unknown operating point" in r.stderr


def test_train_cli_errors(tmp_path, native_file):
    cmd = [sys.executable, "-m", "mindguard", "train", "--data", str(native_file), "--val", str(tmp_path / "missing.jsonl"),
           "--out", str(tmp_path / "m")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "missing.jsonl: no such file" in r.stderr
    safe_only = Conversation.from_dicts("s", [{"role": "user", "content": "hello", "label": "safe"}])
    from mindguard.datasets import write_native

    write_native(tmp_path / "safe.jsonl", [safe_only])
    r = subprocess.run(cmd[:-4] + ["--val", str(tmp_path / "safe.jsonl"), "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 2 and "needs both safe and unsafe turns" in r.stderr


def test_calibrate_adds_operating_points_from_labelled_data(tiny_model, tmp_path, native_file):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    r = subprocess.run([sys.executable, "-m", "mindguard", "calibrate", "--model", str(model), "--data", str(native_file),
                        "--prefix", "site", "--set-default", "site_tpr95"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((model / "config.json").read_text())
    points = cfg["calibration"]["operating_points"]
    assert {"site_tpr90", "site_tpr95", "tpr90", "tpr95"} <= set(points)
    assert cfg["calibration"]["default_operating_point"] == "site_tpr95"
    guard = load_guard(f"encoder:model={model}")
    assert guard.threshold == pytest.approx(points["site_tpr95"])
    # every unsafe turn of the calibration data is flagged at the 95 %-recall point chosen on it
    for conv in make_conversations():
        for i, a in zip(conv.user_turn_indices(), guard.assess_conversation(conv)):
            if conv.messages[i].label != "safe":
                assert a.flagged
    r = subprocess.run([sys.executable, "-m", "mindguard", "calibrate", "--model", str(model), "--data", str(native_file),
                        "--set-default", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown operating point 'nope'" in r.stderr
