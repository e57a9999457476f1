"""The measured floor for the embedded guard (DESIGN.md): *frozen* MiniLM sentence embeddings of
three views — the target user turn, the message just before it, and the mean of the user's last
three earlier turns — fed to a plain logistic regression. Prints validation and development-set
figures so the model card can say by how much the fine-tuned guard beats it.

    python benchmarks/floor_baseline.py --train data/authored_train.jsonl --val data/authored_val.jsonl \
        --dev ../shared/data/devset_testset.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from mindguard.conversation import Conversation
from mindguard.datasets import load_conversations
from mindguard.datasets.testset import conversation_rows
from mindguard.evaluate.metrics import auroc, fpr_at_tpr
from mindguard.guards.encoder import resolve_base
from mindguard.taxonomy import is_unsafe


class FrozenMiniLM:
    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_base("minilm")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.cache}, key=len)
        with torch.inference_mode():
            for s in range(0, len(todo), 64):
                part = todo[s: s + 64]
                enc = self.tok(part, padding=True, truncation=True, max_length=128, return_tensors="pt")
                h = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
                self.cache.update(zip(part, v))
        return np.stack([self.cache[t] for t in texts])


def features(enc: FrozenMiniLM, rows: Sequence[tuple[Conversation, int]]) -> np.ndarray:
    target, before, history = [], [], []
    for c, i in rows:
        msgs = c.messages[: i + 1]
        target.append(msgs[-1].content)
        before.append(msgs[-2].content if len(msgs) > 1 else "")
        history.append([m.content for m in msgs[:-1] if m.role == "user"][-3:])
    t, b = enc.embed(target), enc.embed([x or "(none)" for x in before])
    h = np.stack([enc.embed(x).mean(0) if x else np.zeros(t.shape[1]) for x in history])
    return np.concatenate([t, b, h], axis=1)


def rows_of(convs: Sequence[Conversation]) -> tuple[list[tuple[Conversation, int]], np.ndarray]:
    rows = [(c, i) for _, c, i in conversation_rows(convs)]
    y = np.array([1 if is_unsafe(str(c.messages[i].label)) else 0 for c, i in rows])
    return rows, y


def main(argv: Sequence[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", action="append", required=True)
    ap.add_argument("--val", action="append", default=[])
    ap.add_argument("--dev", action="append", default=[])
    args = ap.parse_args(argv)
    enc = FrozenMiniLM()
    t0 = time.perf_counter()
    train_rows, y = rows_of([c for p in args.train for c in load_conversations(p)])
    clf = LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced").fit(features(enc, train_rows), y)
    out = {"train_turns": len(y), "seconds": 0.0}
    for name, paths in (("val", args.val), ("dev", args.dev)):
        for p in paths:
            rows, yy = rows_of(load_conversations(p))
            s = clf.predict_proba(features(enc, rows))[:, 1]
            out[f"{name}:{p}"] = {"auroc": auroc(yy, s), "fpr_at_tpr_90": fpr_at_tpr(yy, s, 0.9),
                                  "fpr_at_tpr_95": fpr_at_tpr(yy, s, 0.95), "n_turns": len(yy), "n_unsafe": int(yy.sum())}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
