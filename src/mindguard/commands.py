"""Feature subcommands (train, synth, serve, redteam, …) registered onto the CLI parser.

Each feature module exposes `add_command(subparsers)`; listing them here keeps `cli.py` thin and
lets a feature whose optional dependencies are missing still show its `--help`.
"""

from __future__ import annotations

from .cli import extra_command

_FEATURES: list[str] = [
    "mindguard.train.command",
    "mindguard.train.llm_command",
    "mindguard.serve.command",
    "mindguard.redteam.command",
    "mindguard.synth.command",
]

for _mod in _FEATURES:
    import importlib

    extra_command(importlib.import_module(_mod).add_command)
