"""Line-by-line JSONL reading with errors that name the file and line."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError


def open_checked(path: str | Path) -> Path:
    """Return `path` as a Path if it is a readable, non-empty file; else raise DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    return p


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; malformed lines raise DataError."""
    p = open_checked(path)
    seen = False
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
            seen = True
            yield n, obj
    if not seen:
        raise DataError(f"{p}: the file has no records")


def write_jsonl(path: str | Path, rows: Any) -> int:
    """Write an iterable of JSON-able objects, one per line; returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def cut_torn_line(path: Path) -> bool:
    """Cut a last line that lacks its newline (what a crash mid-write leaves); True if it did."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return False
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class LockedAppendLog:
    """The append-only JSONL file of a resumable run (synthesis, red teaming): an exclusive advisory
    lock keeps a second run from writing to it at the same time; a torn last line is cut on open;
    each record is one `os.write` of a whole line followed by fsync, under a thread lock, so a
    record counts as done only once it is on disk."""

    def __init__(self, path: Path) -> None:
        from ..errors import MindGuardError

        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # lock first, then read: a second run on the same file cannot slip in between
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError as exc:
            os.close(self._fd)
            raise MindGuardError(f"another run is writing to {path}; wait for it or choose another --out") from exc
        self.repaired = cut_torn_line(path)

    def append(self, record: Any) -> None:
        """Write one whole line and fsync it."""
        view = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode())
        with self._lock:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
