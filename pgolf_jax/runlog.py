"""Run logging like the records: `key:value` lines to stdout and log.txt, events to
metrics.jsonl, and a progress line with an ETA on stderr for long work."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class RunLog:
    def __init__(self, run_dir: Path | None, echo: bool = True):
        self.run_dir = run_dir
        self.echo = echo
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(run_dir / "log.txt", "a", encoding="utf-8")
            self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        else:
            self._log = self._metrics = None

    def __call__(self, msg: str, console: bool = True) -> None:
        if console and self.echo:
            print(msg, flush=True)
        if self._log is not None:
            self._log.write(msg + "\n")
            self._log.flush()

    def metric(self, event: str, **values) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps({"event": event, "time": round(time.time(), 3), **values}) + "\n")
            self._metrics.flush()

    def close(self) -> None:
        for f in (self._log, self._metrics):
            if f is not None:
                f.close()


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, one line every `every` s otherwise."""

    def __init__(self, label: str, total: int, enabled: bool = True, every: float = 10.0):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else every
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, eta: float | None = None, extra: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.t0
        if eta is None:
            eta = elapsed / done * (self.total - done) if done else float("nan")
        pct = 100.0 * done / self.total
        width = 24
        bar = "#" * int(width * min(done, self.total) / self.total)
        eta_s = fmt_seconds(eta) if eta == eta else "?"
        line = (f"{self.label} [{bar:<{width}}] {done}/{self.total} {pct:5.1f}% "
                f"elapsed {fmt_seconds(elapsed)} eta {eta_s}{' ' + extra if extra else ''}")
        sys.stderr.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
