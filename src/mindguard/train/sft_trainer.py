"""Fine-tune a generative guard on our labelled conversations with TRL + PEFT (`mindguard train-llm`).

The recipe behind MindGuard-4B/8B: a causal LM (Qwen3Guard-Gen by default in the docs) is trained
to write the verdict text for every labelled user turn, given the conversation up to that turn
(`train.sft` builds the examples, in the exact prompt format the `hf` guard scores with). The loss
is on the verdict tokens only. LoRA adapters (default) or full fine-tuning, bf16 and gradient
checkpointing on GPU, optional packing (only when a probe on the real model shows packed examples
cannot attend to each other), checkpoints that a rerun with `resume` continues from, and at every
evaluation our own evaluator's figures (AUROC, FPR at 90/95 % TPR: `mindguard.evaluate`) on the
validation conversations, scored the way `hf` will score them. The output directory is what
`--guard hf:DIR` loads: a LoRA adapter (or, with `merge`, a full model), the tokenizer and
`mindguard_sft.json`, the record of the verdict format and policy text it was trained with.

Example:
    >>> cfg = LLMTrainConfig(base="Qwen/Qwen3Guard-Gen-4B")  # doctest: +SKIP
    >>> train_llm(train_convs, val_convs, "models/mindguard-4b-lora", cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..conversation import Conversation
from ..errors import DataError, MindGuardError, require
from ..guards.hf import SFT_META, read_sft_meta
from ..guards.verdict import FORMATS, family_of
from ..taxonomy import TAXONOMY_VERSION, render_policy
from .sft import MAX_LENGTH, BuildStats, ExampleBuilder, Sampling, SFTExample, balance, labelled_turns, write_examples

EXTRA = "train-llm"
CHECKPOINTS = "checkpoints"  # under the output directory, so the directory itself stays a loadable model
RUN_CONFIG = "train_config.json"
EVAL_HISTORY = "eval_history.jsonl"
# settings a resumed run may change (extend training, keep fewer checkpoints, …); any other change
# would make the resumed run a different experiment from the one its checkpoints belong to
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "logging_steps", "save_total_limit", "eval_conversations",
                               "eval_batch_size", "merge"})


@dataclass(frozen=True)
class LLMTrainConfig:
    """Everything that decides a run (saved as `train_config.json`; compared when resuming)."""

    base: str
    family: str = "auto"  # verdict format: auto (from the base), mindguard, qwen3guard, llamaguard
    policy: str | None = None  # custom policy text for the mindguard prompt (None: our taxonomy)
    max_length: int = MAX_LENGTH
    method: str = "lora"  # lora | full
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    merge: bool = False  # save LoRA merged into the base weights (a plain model directory)
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4  # per device
    grad_accum: int = 4
    learning_rate: float | None = None  # None: 1e-4 for LoRA, 1e-5 for full fine-tuning
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | bf16 | fp16 | fp32
    gradient_checkpointing: bool = True
    packing: bool = False
    eval_steps: int = 200
    save_steps: int = 200
    save_total_limit: int = 3
    logging_steps: int = 10
    eval_conversations: int | None = None  # score only the first N validation conversations
    eval_batch_size: int = 8
    keep_best: bool = False  # end with the checkpoint of best validation AUROC
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 13
    attn_implementation: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise MindGuardError(f"unknown method {self.method!r}; choose lora or full")
        if self.family != "auto" and self.family not in FORMATS:
            raise MindGuardError(f"unknown verdict format {self.family!r}; choose auto, {', '.join(FORMATS)}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise MindGuardError(f"unknown precision {self.precision!r}; choose auto, bf16, fp16 or fp32")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise MindGuardError("train for some epochs or steps: --epochs must be positive (or give --max-steps)")
        for name in ("batch_size", "grad_accum", "eval_steps", "save_steps", "logging_steps", "max_length"):
            if getattr(self, name) < 1:
                raise MindGuardError(f"{name.replace('_', '-')} must be at least 1")
        if self.keep_best and self.save_steps % self.eval_steps:
            raise MindGuardError("--keep-best needs --save-steps to be a multiple of --eval-steps (the best "
                                 "evaluation must have a checkpoint)")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else (1e-4 if self.method == "lora" else 1e-5)

    def resolved_family(self) -> str:
        if self.family != "auto":
            return self.family
        return str(read_sft_meta(self.base).get("family") or family_of(self.base))


# -- optional dependencies ----------------------------------------------------------------------
def require_stack(lora: bool) -> dict[str, Any]:
    """Import TRL and friends, or fail with a message naming the `train-llm` extra."""
    mods = {name: require(name, EXTRA) for name in ("trl", "datasets", "accelerate")}
    if lora:
        mods["peft"] = require("peft", EXTRA)
    return mods


# -- data --------------------------------------------------------------------------------------
def _fingerprint(conversations: Sequence[Conversation]) -> str:
    """A digest of the labelled data (ids, texts and labels), so a resume on other data is refused."""
    h = hashlib.sha256()
    for c in conversations:
        h.update(c.id.encode())
        for m in c.messages:
            h.update(f"\x00{m.role}\x00{m.label or ''}\x00{m.content}".encode())
    return h.hexdigest()[:16]


def _to_dataset(datasets: Any, examples: Sequence[SFTExample]) -> Any:
    """Pre-tokenised rows (prompt ids + completion ids, and the mask TRL turns into labels): the
    tokens trained on are exactly those `hf` scores, with no re-tokenisation by the trainer."""
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "completion_mask": datasets.Sequence(datasets.Value("int8"))})
    parts = []
    for s in range(0, len(examples), 2048):  # chunks keep the Python lists of ids small
        chunk = examples[s: s + 2048]
        parts.append(datasets.Dataset.from_dict({
            "input_ids": [e.prompt_ids + e.completion_ids for e in chunk],
            "completion_mask": [[0] * len(e.prompt_ids) + [1] * len(e.completion_ids) for e in chunk],
        }, features=features))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def build_split(conversations: Sequence[Conversation], builder: ExampleBuilder, sampling: Sampling | None,
                progress: bool = False, desc: str = "examples") -> tuple[list[SFTExample], BuildStats]:
    """All examples of a split (class-balanced when `sampling` is given) and what was built."""
    refs = labelled_turns(conversations)
    if sampling is not None:
        refs = balance(refs, sampling)
    stats = BuildStats()
    it = builder.iter_examples(conversations, refs, stats)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(refs), desc=desc, unit="turn", leave=False)
    return list(it), stats


# -- packing -----------------------------------------------------------------------------------
def packing_is_safe(model: Any, collator: Any) -> bool:
    """Whether examples packed into one row stay independent in this model: the logits of a short
    sequence must be the same packed behind another one (through the padding-free collator the
    trainer uses) as alone. Attention implementations that ignore the packing boundaries let
    examples read each other's conversations and fail this probe."""
    import torch

    vocab = int(model.config.get_text_config().vocab_size)
    g = torch.Generator().manual_seed(0)
    first = torch.randint(3, vocab, (9,), generator=g).tolist()
    second = torch.randint(3, vocab, (6,), generator=g).tolist()
    dev = next(model.parameters()).device
    batch = collator([{"input_ids": first + second, "labels": first + second, "seq_lengths": [9, 6]}])
    batch = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.items() if k != "labels"}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            packed = model(**batch, use_cache=False).logits[0, 9:].float()  # as TRL trains
            alone = model(input_ids=torch.tensor([second], device=dev), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    return bool((packed - alone).abs().max() <= tol * max(1.0, float(alone.abs().max())))


# -- evaluation at checkpoints -------------------------------------------------------------------
def guard_scorer(val: Sequence[Conversation], tokenizer: Any, family: str, policy: str | None,
                 max_length: int, batch_size: int) -> Callable[[Any], dict[str, float]]:
    """A function scoring the model being trained as an `hf` guard on the validation conversations
    with our evaluator; returns AUROC, AUPRC and FPR at 90/95 % TPR (those defined on the data)."""
    from ..evaluate import evaluate
    from ..guards.hf import HFGuard

    def score(model: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            guard = HFGuard.from_model(model, tokenizer, family, max_context_tokens=max_length, policy=policy,
                                       batch_size=batch_size, name="checkpoint")
            report, _ = evaluate(val, [guard], progress=False, bootstrap=0)
        finally:
            model.train(was_training)
        m = report["guards"]["checkpoint"]
        return {k: float(m[k]) for k in ("auroc", "auprc", "fpr_at_tpr_90", "fpr_at_tpr_95") if m[k] is not None}

    return score


def _trainer_class(trl: Any) -> Any:
    """TRL's SFTTrainer whose evaluation adds our evaluator's figures to the eval loss."""

    class GuardSFTTrainer(trl.SFTTrainer):  # type: ignore[misc, name-defined]
        guard_eval: Callable[[Any], dict[str, float]] | None = None
        history_path: Path | None = None
        last_eval: tuple[int, dict[str, float]] | None = None

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:
            metrics: dict[str, float] = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            if self.guard_eval is not None:
                extra = {f"{metric_key_prefix}_{k}": v for k, v in self.guard_eval(self.model).items()}
                self.log(extra)
                metrics.update(extra)
            if self.history_path is not None:
                row = {"step": self.state.global_step, "epoch": self.state.epoch, **metrics}
                with self.history_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
            self.last_eval = (self.state.global_step, metrics)
            return metrics

    return GuardSFTTrainer


# -- the run -----------------------------------------------------------------------------------
def _checkpoints(out: Path) -> list[Path]:
    d = out / CHECKPOINTS
    found = [p for p in d.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()] if d.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _run_record(cfg: LLMTrainConfig, family: str, data_print: str, val_print: str | None) -> dict[str, Any]:
    rec = asdict(cfg)
    rec["family"] = family
    rec["data_fingerprint"] = data_print
    rec["val_fingerprint"] = val_print
    return rec


def _check_resume(out: Path, resume: str | bool | None, record: dict[str, Any]) -> str | bool | None:
    """What to pass the trainer as `resume_from_checkpoint`, after refusing unsafe restarts."""
    found = _checkpoints(out)
    if not resume:
        if found:
            raise MindGuardError(f"{out} holds checkpoints of an earlier run ({found[-1].name}); pass --resume to "
                                 "continue it, or choose another --out")
        return None
    saved_path = out / RUN_CONFIG
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(saved) | set(record)
                         if k not in RESUMABLE_CHANGES and saved.get(k) != record.get(k))
        if changed:
            raise MindGuardError(f"cannot resume {out}: the run's settings or data changed ({', '.join(changed)}); "
                                 "resume with the same settings or start a new --out")
    if isinstance(resume, str) and resume != "latest":
        if not Path(resume).is_dir():
            raise MindGuardError(f"no checkpoint directory {resume!r}")
        return resume
    if not found:
        raise MindGuardError(f"nothing to resume: {out / CHECKPOINTS} holds no checkpoint")
    return str(found[-1])


def _compat(config_class: Any, cfg: LLMTrainConfig) -> dict[str, Any]:
    """Options whose names differ across versions. transformers 5 folded `warmup_ratio` into
    `warmup_steps` (a float below 1 is a ratio). Checkpointing goes through TRL's own
    `gradient_checkpointing` field, which its trainer reads (transformers' newer name for it,
    `activation_checkpointing`, would leave TRL's default of True in force)."""
    fields = getattr(config_class, "__dataclass_fields__", {})
    out: dict[str, Any] = {"warmup_ratio": cfg.warmup_ratio} if "warmup_ratio" in fields else {"warmup_steps": cfg.warmup_ratio}
    out["gradient_checkpointing"] = cfg.gradient_checkpointing
    out["gradient_checkpointing_kwargs"] = {"use_reentrant": False} if cfg.gradient_checkpointing else None
    return out


def _precision(cfg: LLMTrainConfig, torch: Any) -> tuple[Any, bool, bool]:
    """(weights dtype, bf16 mixed precision, fp16 mixed precision). LoRA keeps the frozen base in
    bf16 (the adapters train in fp32); full fine-tuning keeps fp32 master weights under bf16
    autocast, since AdamW updates on bf16 weights are lost to rounding."""
    cuda = torch.cuda.is_available()
    prec = cfg.precision
    if prec == "auto":
        prec = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if prec in ("bf16", "fp16") and not cuda:
        raise MindGuardError(f"--precision {prec} needs a CUDA GPU; use fp32 (or auto) on the CPU")
    if prec == "bf16":
        return (torch.bfloat16 if cfg.method == "lora" else torch.float32), True, False
    return torch.float32, False, prec == "fp16"  # fp16 trains fp32 master weights under autocast


def train_llm(train: Sequence[Conversation], val: Sequence[Conversation], out: str | Path, cfg: LLMTrainConfig,
              resume: str | bool | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, examples_path: str | Path | None = None) -> dict[str, Any]:
    """Fine-tune `cfg.base` into a guard saved at `out`; returns a summary (examples, steps, the last
    validation figures). `resume`: True/"latest" continues from the newest checkpoint under `out`,
    a path from that checkpoint. `examples_path`: also write the training examples there (JSONL)."""
    say = log or (lambda s: print(s, file=sys.stderr))
    mods = require_stack(cfg.method == "lora")
    trl = mods["trl"]
    import torch
    import transformers

    out = Path(out)
    family = cfg.resolved_family()
    policy = (cfg.policy or render_policy()) if family == "mindguard" else None
    record = _run_record(cfg, family, _fingerprint(train), _fingerprint(val) if val else None)
    resume_from = _check_resume(out, resume, record)
    if cfg.keep_best and not val:
        raise MindGuardError("--keep-best needs validation data (--val)")

    try:
        tokenizer: Any = transformers.AutoTokenizer.from_pretrained(cfg.base, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise MindGuardError(f"cannot load the tokenizer of {cfg.base!r}: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    builder = ExampleBuilder(tokenizer, family, policy, cfg.max_length)
    train_ex, train_stats = build_split(train, builder, cfg.sampling, progress, "train examples")
    say(f"train: {train_stats.describe()}")
    if examples_path:
        write_examples(examples_path, train_ex)
    if not train_ex:
        raise DataError("no training examples: the data has no labelled user turns that fit in --max-length")
    val_ex: list[SFTExample] = []
    val_convs = list(val)[: cfg.eval_conversations] if cfg.eval_conversations else list(val)
    if val_convs:
        val_ex, val_stats = build_split(val_convs, builder, None, progress, "validation examples")
        say(f"validation: {val_stats.describe()}")
        if not val_ex:
            raise DataError("no validation examples: the validation data has no labelled user turns that fit")

    dtype, bf16, fp16 = _precision(cfg, torch)
    torch.manual_seed(cfg.seed)
    init: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        init["attn_implementation"] = cfg.attn_implementation
    try:
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(cfg.base, **init)
    except OSError as exc:
        raise MindGuardError(f"cannot load the base model {cfg.base!r}: {str(exc).splitlines()[0]}") from exc
    if torch.cuda.is_available():
        model.to("cuda")
    if cfg.packing:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
        if not packing_is_safe(model, collator):
            raise MindGuardError("packing is not safe with this model and attention implementation (packed examples "
                                 "would attend to each other); train without --packing, or with "
                                 "--attn-implementation flash_attention_2")

    peft_config = None
    if cfg.method == "lora":
        peft_config = mods["peft"].LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                              target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
    has_val = bool(val_ex)
    settings = dict(
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler, **_compat(trl.SFTConfig, cfg),
        weight_decay=cfg.weight_decay,
        bf16=bf16, fp16=fp16,
        max_length=cfg.max_length, packing=cfg.packing, packing_strategy="bfd",
        completion_only_loss=True,  # the loss is on the verdict, never on the conversation
        eval_strategy="steps" if has_val else "no", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.keep_best, metric_for_best_model="auroc" if cfg.keep_best else None,
        greater_is_better=True if cfg.keep_best else None,
        logging_steps=cfg.logging_steps, report_to="none", disable_tqdm=not progress,
        seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )
    try:
        args = trl.SFTConfig(**settings)
    except ValueError as exc:  # combinations transformers rejects (e.g. bf16 on a GPU without it)
        raise MindGuardError(f"invalid training settings: {str(exc).splitlines()[0]}") from exc
    datasets = mods["datasets"]
    trainer = _trainer_class(trl)(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=_to_dataset(datasets, train_ex), eval_dataset=_to_dataset(datasets, val_ex) if has_val else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if resume_from is None:
        (out / EVAL_HISTORY).unlink(missing_ok=True)  # a fresh run starts a fresh history
    if has_val:
        trainer.guard_eval = guard_scorer(val_convs, tokenizer, family, policy, cfg.max_length, cfg.eval_batch_size)
        trainer.history_path = out / EVAL_HISTORY
    t0 = time.perf_counter()
    if resume_from is None:
        result = trainer.train()
    else:
        say(f"resuming from {resume_from}")
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        except ValueError as exc:  # e.g. a directory that is no checkpoint of this model
            raise MindGuardError(f"cannot resume from {resume_from}: {str(exc).splitlines()[0]}") from exc
    seconds = time.perf_counter() - t0
    final_eval: dict[str, float] = {}
    if has_val:
        last = trainer.last_eval
        # the figures of the weights being saved: an evaluation at this very step already has them,
        # unless the best checkpoint was just loaded back
        final_eval = last[1] if last and last[0] == trainer.state.global_step and not cfg.keep_best else trainer.evaluate()
    _save(trainer, tokenizer, out, cfg)
    summary = {
        "base": cfg.base, "family": family, "method": cfg.method, "merged": cfg.method == "lora" and cfg.merge,
        "train": train_stats.to_dict(), "steps": int(trainer.state.global_step), "seconds": round(seconds, 1),
        "train_loss": None if not math.isfinite(result.training_loss) else round(float(result.training_loss), 5),
        "eval": {k.removeprefix("eval_"): v for k, v in final_eval.items()
                 if isinstance(v, (int, float)) and not k.endswith(("runtime", "per_second"))},
    }
    meta = {"family": family, "policy": policy, "max_length": cfg.max_length, "taxonomy_version": TAXONOMY_VERSION,
            "written_by": "mindguard train-llm", **summary}
    (out / SFT_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def _save(trainer: Any, tokenizer: Any, out: Path, cfg: LLMTrainConfig) -> None:
    """The final model at `out`: a LoRA adapter (or merged model) or the full model, and the tokenizer."""
    model = trainer.model
    if cfg.method == "lora" and cfg.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out)
        for stale in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            (out / stale).unlink(missing_ok=True)
    else:
        trainer.save_model(str(out))
        if cfg.method == "full" and (out / "adapter_config.json").exists():
            # a full model saved over an earlier adapter run must not be read as that adapter
            for stale in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
                (out / stale).unlink(missing_ok=True)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "runs", ignore_errors=True)  # tensorboard stubs, if any integration wrote them
