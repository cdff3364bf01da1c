"""Keeping third-party chatter (arc-state's module print, Lightning banners, gseapy logs) off the user's console."""

from __future__ import annotations

import contextlib
import io
import logging


@contextlib.contextmanager
def silenced():
    """Discard stdout, stderr and log records up to WARNING for the duration of the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
