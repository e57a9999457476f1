"""A tiny causal LM and tokenizer built inside the tests (no hub): a word-level tokenizer wrapped in
`PreTrainedTokenizerFast` with a ChatML chat template, and a 2-layer `LlamaForCausalLM`.

`fit_verdicts` teaches it (a few seconds of full-batch Adam on CPU) to answer the conftest
conversations with their gold verdicts in a given format, so guard tests can check behaviour, not
just plumbing. Reusable by the SFT recipe's tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from mindguard.conversation import Conversation, Message
from mindguard.guards.verdict import FORMATS, OUTPUT_INSTRUCTIONS, RATIONALE_INSTRUCTION, llama_guard_template
from mindguard.taxonomy import render_policy

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<unk>", "<s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
FORMAT_WORDS = ("Safety: Safe Unsafe Controversial Categories: None Violent Suicide & Self-Harm Rationale: "
                "safe unsafe S1 S2 S11 , user assistant system unsafe_self_harm_risk unsafe_harm_to_others")


def words_of(texts: Iterable[str]) -> list[str]:
    out: set[str] = set()
    for t in texts:
        out.update(re.findall(r"\w+|[^\w\s]", t))
    return sorted(out)


def build_tokenizer(path: Path, extra_texts: Sequence[str] = ()) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = [FORMAT_WORDS, render_policy(), OUTPUT_INSTRUCTIONS, RATIONALE_INSTRUCTION, llama_guard_template(), *extra_texts]
    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in words_of(texts) if w not in SPECIALS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=SPECIALS[3:])
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    return tok


def build_model(path: Path, vocab_size: int, seed: int = 0) -> object:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      pad_token_id=0, bos_token_id=2, eos_token_id=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return model


def build_tiny_lm(path: Path, conversations: Sequence[Conversation]) -> Path:
    """A randomly initialised tiny LM + tokenizer saved under `path` (loadable by name/path)."""
    texts = [m.content for c in conversations for m in c.messages]
    tok = build_tokenizer(path, texts)
    build_model(path, len(tok))  # type: ignore[arg-type]
    return path


def fit_verdicts(path: Path, conversations: Sequence[Conversation], fmt: str,
                 render_prompt: Callable[[Sequence[Message]], str], steps: int = 80, lr: float = 5e-3) -> float:
    """Teach the saved tiny LM at `path` the gold verdict of every user turn: the loss is on the
    verdict text only (after `render_prompt`, which ends with the format's prefix). Returns the
    final loss and saves the model back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    f = FORMATS[fmt]
    seqs, targets = [], []
    for c in conversations:
        for i in c.labelled_turns():
            prompt = render_prompt(c.prefix(i))
            answer = f.render(str(c.messages[i].label))[len(f.prefix):] + "<|im_end|>"
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tok(answer, add_special_tokens=False)["input_ids"]
            seqs.append(p_ids + a_ids)
            targets.append(len(p_ids))
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (s, t) in enumerate(zip(seqs, targets)):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        labels[r, t: len(s)] = torch.tensor(s[t:])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on the shared 2-core machine
    try:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(path)
    return float(loss.detach())
