"""The console: progress on stderr (a bar on a terminal, one summary line per stage otherwise), and keeping
third-party chatter (arc-state's module print, Lightning banners, gseapy logs, other packages' warnings) off it."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings

from tqdm import tqdm


class StageProgress:
    """Progress of one stage over `total` units, on stderr: a live bar when stderr is a terminal; otherwise nothing
    while it runs and one line when it closes ('ΔY (KDs × draws): 153 KDs in 12.3 s'), so a redirected log holds no
    carriage-return updates. `enabled=False` shows nothing at all."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0):
        terminal = sys.stderr.isatty()
        self.desc, self.unit, self.initial, self.done = desc, unit, initial, initial
        self.summary = enabled and not terminal
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                        disable=not (enabled and terminal))

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.summary:
            kept = f" ({self.initial:,} already cached)" if self.initial else ""
            print(f"{self.desc}: {self.done - self.initial:,} {self.unit}s in {time.perf_counter() - self.started:.1f} s"
                  f"{kept}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """A progress message (stage headers, the demo build): stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING):
    """Discard log records up to `level` (Lightning's banners and tips are INFO records); progress bars still show."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def silenced():
    """Discard stdout, stderr and log records up to WARNING for the duration of the block."""
    with quiet_logs(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# Warnings issued from any module outside this package (the filter's `module` is the issuing module's name).
THIRD_PARTY = r"(?!analysis(\.|$))"


@contextlib.contextmanager
def third_party_warnings_off():
    """Ignore warnings issued by other packages' code for the duration of the block (peft's deprecation notice when
    arc-state imports it, Lightning's hints on loading a checkpoint): the package's entry points (`python -m
    analysis`, `analysis.run`, the report) run inside it, so the console and the report hold only our own words.
    This package's own warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=THIRD_PARTY)
        yield
