"""Keeping third-party chatter (arc-state's module print, Lightning banners, gseapy logs) off the user's console."""

from __future__ import annotations

import contextlib
import io
import logging


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
