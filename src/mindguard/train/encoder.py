"""Train the embedded encoder guard on labelled conversations, on the CPU.

The turn encoder's top layers, the GRU state and the heads are trained *jointly*, a few whole
conversations per step, so the state learns how risk persists and resolves across turns. An
auxiliary loss on the per-turn (local) head keeps the encoder's own reading of each turn sharp.
After training the logits are temperature-calibrated on validation data and the thresholds that
reach 90 % and 95 % recall of unsafe turns there are stored as operating points.

Example:
    >>> from mindguard.train.encoder import TrainConfig, train_encoder  # doctest: +SKIP
    >>> train_encoder(train_convs, val_convs, "models/mine", TrainConfig(epochs=3))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..conversation import Conversation
from ..errors import DataError
from ..evaluate.metrics import auroc, threshold_at_tpr
from ..guards.encoder import Calibration, EncoderConfig, EncoderModel, turn_inputs
from ..taxonomy import LABELS


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved in the model's meta)."""

    epochs: int = 3
    batch_turns: int = 48
    lr_encoder: float = 5e-5
    lr_head: float = 2e-3
    weight_decay: float = 0.01
    warmup_share: float = 0.06
    local_loss_weight: float = 0.5
    synthetic_weight: float = 0.5
    seed: int = 13
    max_minutes: float | None = None
    default_operating_point: str = "tpr95"


@dataclass
class _Example:
    pairs: list[tuple[list[int], list[int]]]
    labels: list[int]  # -1 = unlabelled turn (kept as context, no loss)
    weight: float
    hidden: list[torch.Tensor] | None = None  # cached output of the frozen layers, one per pair


def _examples(model: EncoderModel, convs: Sequence[Conversation], synthetic_weight: float) -> list[_Example]:
    out = []
    for c in convs:
        inp = turn_inputs(c.messages)
        labels = [LABELS.index(c.messages[i].label) if c.messages[i].label else -1 for i, _, _ in inp]
        if all(x < 0 for x in labels):
            continue
        w = synthetic_weight if c.meta.get("source") == "synthetic" else 1.0
        out.append(_Example([model.tokenizer.pair(u, p) for _, u, p in inp], labels, w))
    return out


def _cache_frozen_layers(model: EncoderModel, examples: Sequence[_Example], progress: bool, batch: int = 64) -> None:
    """Run the embeddings and frozen layers once per pair (they never change during training) and
    keep their output in fp16, so each step only runs the fine-tuned layers."""
    refs = [(e, k) for e in examples for k in range(len(e.pairs))]
    order = sorted(range(len(refs)), key=lambda i: len(refs[i][0].pairs[refs[i][1]][0]))
    for e in examples:
        e.hidden = [torch.empty(0)] * len(e.pairs)
    was_training = model.training
    model.eval()
    chunks = [order[s: s + batch] for s in range(0, len(order), batch)]
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="caching frozen layers", unit="batch")
    with torch.inference_mode():
        for idx in chunks:
            pairs = [refs[i][0].pairs[refs[i][1]] for i in idx]
            enc = model.tokenizer.batch(pairs)
            h = model.encoder.lower(**enc)
            for j, i in enumerate(idx):
                e, k = refs[i]
                assert e.hidden is not None
                e.hidden[k] = h[j, : len(e.pairs[k][0])].to(torch.float16).clone()
    model.train(was_training)


def _batches(examples: list[_Example], batch_turns: int, rng: random.Random) -> list[list[_Example]]:
    order = examples[:]
    rng.shuffle(order)
    batches, cur, n = [], [], 0
    for ex in order:
        cur.append(ex)
        n += len(ex.labels)
        if n >= batch_turns:
            batches.append(cur)
            cur, n = [], 0
    if cur:
        batches.append(cur)
    return batches


def _turn_vectors(model: EncoderModel, pairs: Sequence[tuple[list[int], list[int]]], hidden: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fine-tuned layers + pooling over cached frozen-layer outputs."""
    n = max(len(p[0]) for p in pairs)
    h = torch.zeros(len(pairs), n, model.encoder.hidden)
    mask = torch.zeros(len(pairs), n, dtype=torch.long)
    types = torch.zeros(len(pairs), n, dtype=torch.long)
    for i, ((ids, tt), hid) in enumerate(zip(pairs, hidden)):
        h[i, : len(ids)] = hid.float()
        mask[i, : len(ids)] = 1
        types[i, : len(ids)] = torch.tensor(tt)
    return model.encoder.upper(h, mask, types)


def _forward(model: EncoderModel, batch: Sequence[_Example]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [p for ex in batch for p in ex.pairs]
    hidden = [h for ex in batch for h in (ex.hidden or [])]
    vecs = _turn_vectors(model, pairs, hidden)
    return model.head.run(vecs, [len(ex.pairs) for ex in batch])


def predict_logits(model: EncoderModel, examples: Sequence[_Example], chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Logits and gold label ids for every labelled turn of `examples` (eval mode)."""
    model.eval()
    logits, gold = [], []
    with torch.inference_mode():
        for s in range(0, len(examples), chunk):
            part = examples[s: s + chunk]
            lg, _ = _forward(model, part)
            y = np.array([y for ex in part for y in ex.labels])
            keep = y >= 0
            logits.append(lg.numpy()[keep])
            gold.append(y[keep])
    return np.concatenate(logits), np.concatenate(gold)


def _deployment_logits(model: EncoderModel, convs: Sequence[Conversation]) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated logits of every labelled user turn through the inference path."""
    inputs = [turn_inputs(c.messages) for c in convs]
    with torch.inference_mode():
        vecs = model.encode_pairs([(u, p) for inp in inputs for _, u, p in inp])
        logits, _ = model.head.run(vecs, [len(inp) for inp in inputs])
    gold = np.array([LABELS.index(c.messages[i].label) if c.messages[i].label else -1 for c, inp in zip(convs, inputs) for i, _, _ in inp])
    keep = gold >= 0
    return logits.numpy()[keep], gold[keep]


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature minimising the validation negative log-likelihood."""
    lg = torch.tensor(logits, dtype=torch.float32)
    y = torch.tensor(gold, dtype=torch.long)
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lg / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(min(max(log_t.exp().item(), 0.05), 20.0))


def _p_unsafe(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return 1.0 - e[:, 0] / e.sum(axis=1)


def _val_figures(logits: np.ndarray, gold: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    y = (gold > 0).astype(int)
    s = _p_unsafe(logits, temperature)
    at90, at95 = threshold_at_tpr(y, s, 0.90), threshold_at_tpr(y, s, 0.95)
    return {"auroc": auroc(y, s), "fpr_at_tpr_90": at90 and at90[1], "fpr_at_tpr_95": at95 and at95[1],
            "threshold_at_tpr_90": at90 and at90[0], "threshold_at_tpr_95": at95 and at95[0],
            "n_turns": int(len(y)), "n_unsafe": int(y.sum())}


def train_encoder(
    train: Sequence[Conversation],
    val: Sequence[Conversation],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    encoder_config: EncoderConfig | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train, calibrate, save to `out_dir`; returns the summary written to `metrics.json`."""
    cfg = config or TrainConfig()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    t_start = time.perf_counter()

    model = EncoderModel(encoder_config or EncoderConfig())
    train_ex = _examples(model, train, cfg.synthetic_weight)
    val_ex = _examples(model, val, 1.0)
    if not train_ex:
        raise DataError("the training data has no labelled user turns")
    if not val_ex:
        raise DataError("the validation data has no labelled user turns")
    val_gold = np.array([y for ex in val_ex for y in ex.labels if y >= 0])
    if len(set((val_gold > 0).tolist())) < 2:
        raise DataError("the validation data needs both safe and unsafe turns to calibrate thresholds")

    _cache_frozen_layers(model, train_ex + val_ex, progress)
    counts = Counter(y for ex in train_ex for y in ex.labels if y >= 0)
    total = sum(counts.values())
    # inverse square-root frequency: lifts the rare unsafe labels without drowning precision
    cw = torch.tensor([math.sqrt(total / max(counts.get(k, 1), 1)) for k in range(len(LABELS))], dtype=torch.float32)
    cw = cw / cw[0]
    log(f"train: {len(train_ex)} conversations, {total} labelled turns {dict((LABELS[k], v) for k, v in sorted(counts.items()))}; "
        f"val: {len(val_ex)} conversations, {len(val_gold)} turns; class weights {[round(x, 2) for x in cw.tolist()]}")

    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": enc_params, "lr": cfg.lr_encoder},
        {"params": list(model.head.parameters()), "lr": cfg.lr_head},
    ], weight_decay=cfg.weight_decay)
    steps_per_epoch = len(_batches(train_ex, cfg.batch_turns, random.Random(0)))
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    warm = max(1, int(cfg.warmup_share * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1.0 - s / total_steps))
    ce = nn.CrossEntropyLoss(weight=cw, reduction="none")

    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    out_of_time = False
    for epoch in range(cfg.epochs):
        model.train()
        batches = _batches(train_ex, cfg.batch_turns, rng)
        bar: Any = batches
        if progress:
            from tqdm import tqdm

            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        run_loss = 0.0
        for step, batch in enumerate(bar):
            logits, local = _forward(model, batch)
            y = torch.tensor([y for ex in batch for y in ex.labels])
            w = torch.tensor([ex.weight for ex in batch for _ in ex.labels])
            mask = (y >= 0).float()
            yc = y.clamp(min=0)
            per = (ce(logits, yc) + cfg.local_loss_weight * ce(local, yc)) * w * mask
            loss = per.sum() / (mask * w).sum().clamp(min=1e-6)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            run_loss = 0.9 * run_loss + 0.1 * loss.item() if step else loss.item()
            if progress:
                bar.set_postfix(loss=f"{run_loss:.3f}")
            if cfg.max_minutes and time.perf_counter() - t_start > cfg.max_minutes * 60:
                out_of_time = True
                break
        lg, gold = predict_logits(model, val_ex)
        fig = _val_figures(lg, gold)
        fig["epoch"] = epoch + 1
        history.append(fig)
        log(f"epoch {epoch + 1}: val AUROC {fig['auroc']:.4f}  FPR@90%TPR {fig['fpr_at_tpr_90']:.4f}  "
            f"FPR@95%TPR {fig['fpr_at_tpr_95']:.4f}  ({time.perf_counter() - t_start:.0f}s)")
        score = (fig["auroc"] or 0.0) - 0.5 * (fig["fpr_at_tpr_90"] or 1.0)
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if out_of_time:
            log(f"stopped after {cfg.max_minutes} minutes")
            break

    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    with torch.no_grad():  # the saved fine-tuned layers are fp16: calibrate the weights as shipped
        for name, p in model.encoder.named_parameters():
            if name.startswith(model.encoder.trainable_prefixes):
                p.copy_(p.half().float())
    # calibrate on the deployment path (full encoder, no cached fp16 layers) so that the stored
    # thresholds reproduce exactly at inference; a hair of slack keeps boundary turns flagged
    lg, gold = _deployment_logits(model, val)
    temperature = fit_temperature(lg, gold)
    final = _val_figures(lg, gold, temperature)
    eps = 1e-6
    ops = {"tpr90": float(final["threshold_at_tpr_90"]) - eps, "tpr95": float(final["threshold_at_tpr_95"]) - eps, "default": 0.5}
    model.calibration = Calibration(temperature, ops, cfg.default_operating_point)
    model.meta = {
        "train": asdict(cfg), "trained_seconds": round(time.perf_counter() - t_start, 1),
        "train_conversations": len(train_ex), "val_conversations": len(val_ex),
        "train_label_counts": {LABELS[k]: v for k, v in sorted(counts.items())}, "validation": final, "history": history,
    }
    out = Path(out_dir)
    model.save(out)
    (out / "metrics.json").write_text(json.dumps(model.meta, indent=2) + "\n")
    log(f"saved {out}: temperature {temperature:.3f}, operating points {ops}")
    return model.meta


def add_operating_points(model_dir: str | Path, conversations: Sequence[Conversation], prefix: str,
                         set_default: str | None = None) -> dict[str, float]:
    """Choose the p(unsafe) thresholds reaching 90 % and 95 % recall of unsafe turns on *your*
    labelled conversations and store them in the model as `<prefix>_tpr90` / `<prefix>_tpr95`
    (optionally making one the default). Thresholds from a training-style validation split with a
    high share of unsafe turns sit too low for real traffic, where risk is rare."""
    from ..guards.encoder import EncoderGuard

    if not prefix.isidentifier():
        raise DataError(f"operating-point prefix {prefix!r} must be a simple name (letters, digits, _)")
    guard = EncoderGuard(model=str(model_dir), explain=False)
    convs = [c for c in conversations if c.labelled_turns()]
    res = guard.assess_many(convs, [c.labelled_turns() for c in convs])
    gold = np.array([1 if c.messages[i].label != "safe" else 0 for c in convs for i in c.labelled_turns()])
    scores = np.array([a.p_unsafe for r in res for a in r])
    if len(set(gold.tolist())) < 2:
        raise DataError("the data needs both safe and unsafe turns to choose operating points")
    new = {}
    for target in (90, 95):
        thr = threshold_at_tpr(gold, scores, target / 100)
        assert thr is not None
        new[f"{prefix}_tpr{target}"] = float(thr[0]) - 1e-6
    cfg_path = Path(model_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["calibration"]["operating_points"].update(new)
    if set_default is not None:
        if set_default not in cfg["calibration"]["operating_points"]:
            raise DataError(f"unknown operating point {set_default!r}; available: {', '.join(sorted(cfg['calibration']['operating_points']))}")
        cfg["calibration"]["default_operating_point"] = set_default
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return new
