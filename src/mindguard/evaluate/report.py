"""Write an evaluation run to a directory: report.json, report.md, roc.png and scores.jsonl."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import binary
from .runner import TurnScores, write_scores


def _f(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def render_markdown(report: dict[str, Any], data_name: str) -> str:
    guards = report["guards"]
    names = list(guards)
    first = guards[names[0]]
    lines = [
        f"# MindGuard evaluation — {data_name}",
        "",
        f"{report['n_conversations']} conversations, {first['n_turns']} scored user turns, "
        f"{first['n_unsafe']} unsafe ({first['n_unsafe'] / max(first['n_turns'], 1):.1%}). "
        "Binary view: safe vs either unsafe label; AUROC interval = 95 % bootstrap over conversations.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    rows = [
        ("AUROC", lambda m: _f(m["auroc"])),
        ("AUROC 95% CI", lambda m: "—" if not m["auroc_ci"] else f"[{m['auroc_ci'][0]:.3f}, {m['auroc_ci'][1]:.3f}]"),
        ("AUPRC", lambda m: _f(m["auprc"])),
        ("FPR@90%TPR", lambda m: _f(m["fpr_at_tpr_90"])),
        ("FPR@95%TPR", lambda m: _f(m["fpr_at_tpr_95"])),
        ("recall self-harm @90%TPR thr", lambda m: _f((m["recall_by_label"] or {}).get("unsafe_self_harm_risk"))),
        ("recall harm-to-others @90%TPR thr", lambda m: _f((m["recall_by_label"] or {}).get("unsafe_harm_to_others"))),
        ("safe kept @90%TPR thr", lambda m: _f((m["recall_by_label"] or {}).get("safe"))),
        ("seconds", lambda m: f"{m['seconds']:.1f}"),
    ]
    for title, fn in rows:
        lines.append(f"| {title} | " + " | ".join(fn(guards[n]) for n in names) + " |")
    lines += ["", "## Confusion at each guard's default threshold (rows gold, columns predicted)", ""]
    for n in names:
        c = guards[n]["confusion"]
        labs = list(c)
        lines += [f"**{n}** (threshold {guards[n]['default_threshold']:.3f})", "",
                  "| gold \\ pred | " + " | ".join(labs) + " |", "|---|" + "---|" * len(labs)]
        lines += [f"| {g} | " + " | ".join(str(c[g][p]) for p in labs) + " |" for g in labs]
        lines.append("")
    if "by" in report:
        lines += [f"## By {report['by']['key']} (AUROC / FPR@90%TPR; — where a group lacks safe or unsafe turns)", "",
                  f"| {report['by']['key']} | conversations | turns | unsafe | " + " | ".join(names) + " |",
                  "|---|---|---|---|" + "---|" * len(names)]
        for v, e in report["by"]["groups"].items():
            cells = [f"{_f(e['guards'][n]['auroc'])} / {_f(e['guards'][n]['fpr_at_tpr_90'])}" for n in names]
            lines.append(f"| {v} | {e['n_conversations']} | {e['n_turns']} | {e['n_unsafe']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_roc(path: Path, items: Sequence[TurnScores], names: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y = binary([it.gold for it in items])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for n in names:
        s = np.array([it.p_unsafe[n] for it in items])
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        for ax in axes:
            ax.plot(fpr, tpr, label=n)
    axes[0].plot([0, 1], [0, 1], ls=":", c="grey")
    axes[0].set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-3, 1)
    for t in (0.9, 0.95):
        axes[1].axhline(t, ls=":", c="grey")
    axes[1].set(xlabel="false-positive rate (log)", ylabel="true-positive rate", title="low-FPR region")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, report: dict[str, Any], items: Sequence[TurnScores], data_name: str, save_scores: bool) -> list[Path]:
    """Write the report files; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "roc.png"]
    paths[0].write_text(json.dumps({"data": data_name, **report}, indent=2) + "\n")
    paths[1].write_text(render_markdown(report, data_name) + "\n")
    plot_roc(paths[2], items, list(report["guards"]))
    if save_scores:
        paths.append(out / "scores.jsonl")
        write_scores(paths[-1], items)
    return paths
