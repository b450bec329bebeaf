"""Run logging like the records: `key:value` lines to stdout and log.txt, events to
metrics.jsonl, and a progress line with an ETA on stderr for long work."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from pgolf_jax.fsio import dumps, write_error


def fmt_seconds(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class RunLog:
    """log.txt and metrics.jsonl of a run directory (append-only; None = console only)."""

    FILES = ("log.txt", "metrics.jsonl")

    def __init__(self, run_dir: Path | None, echo: bool = True):
        self.run_dir = run_dir
        self.echo = echo
        self.events: dict[str, int] = {}  # metric events written, by name
        self._log = self._metrics = None
        if run_dir is not None:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                self._log = open(run_dir / "log.txt", "a", encoding="utf-8")
                self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
            except OSError as exc:
                self.close()
                raise write_error(run_dir / "log.txt", exc) from None

    def _write(self, f, text: str) -> None:
        try:
            f.write(text)
            f.flush()
        except OSError as exc:
            raise write_error(f.name, exc) from None

    def __call__(self, msg: str, console: bool = True) -> None:
        if console and self.echo:
            print(msg, flush=True)
        if self._log is not None:
            self._write(self._log, msg + "\n")

    def metric(self, event: str, **values) -> None:
        self.events[event] = self.events.get(event, 0) + 1
        if self._metrics is not None:
            line = dumps({"event": event, "time": round(time.time(), 3), **values}, what=f"metrics event {event!r}")
            self._write(self._metrics, line + "\n")

    def offsets(self) -> dict:
        """Bytes written so far to each file (a checkpoint records them; see truncate)."""
        return {name: f.tell() for name, f in zip(self.FILES, (self._log, self._metrics)) if f is not None}

    @classmethod
    def truncate(cls, run_dir: Path, offsets: dict | None) -> None:
        """Cut log.txt and metrics.jsonl back to what a checkpoint recorded, so the steps a resumed
        run repeats appear once."""
        for name, size in (offsets or {}).items():
            path = Path(run_dir) / name
            if name in cls.FILES and path.is_file() and path.stat().st_size > int(size):
                os.truncate(path, int(size))

    def close(self) -> None:
        for f in (self._log, self._metrics):
            if f is not None and not f.closed:
                f.close()


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, one line every `every` s otherwise.

    Counts are shown divided by `scale` and followed by `unit` (bytes as MB: unit="MB", scale=1e6).
    A total <= 0 is unknown: the line then shows the elapsed time instead of a percentage and an ETA."""

    def __init__(self, label: str, total: float, enabled: bool = True, every: float = 10.0, unit: str = "",
                 scale: float = 1.0):
        self.label, self.total, self.enabled, self.scale = label, total, enabled, scale
        self._unit = f" {unit}" if unit else ""
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else every
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._drawn = False  # an in-place line is on the terminal without its newline

    def _num(self, n: float) -> str:
        return f"{n / self.scale:.0f}" if self.scale != 1 else f"{n}"

    def _write(self, line: str, final: bool = False) -> None:
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
            self._drawn = not final
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def update(self, done: float, eta: float | None = None, extra: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.t0
        tail = f" {extra}" if extra else ""
        if self.total <= 0:
            self._write(f"{self.label} {self._num(done)}{self._unit} elapsed {fmt_seconds(elapsed)}{tail}")
            return
        if eta is None:
            eta = elapsed / done * (self.total - done) if done else float("nan")
        pct = 100.0 * done / self.total
        width = 24
        bar = "#" * int(width * min(done, self.total) / self.total)
        eta_s = fmt_seconds(eta) if math.isfinite(eta) else "?"
        self._write(f"{self.label} [{bar:<{width}}] {self._num(done)}/{self._num(self.total)}{self._unit} {pct:5.1f}% "
                    f"elapsed {fmt_seconds(elapsed)} eta {eta_s}{tail}")

    def finish(self, done: float) -> None:
        """The closing line: `<label>: <done> <unit> done in <elapsed>`."""
        if self.enabled:
            elapsed = fmt_seconds(time.perf_counter() - self.t0)
            self._write(f"{self.label}: {self._num(done)}{self._unit} done in {elapsed}", final=True)

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False
