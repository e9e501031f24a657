"""An output named on the command line (report, status, cancel): a directory, or a URL."""

from __future__ import annotations

import argparse
from pathlib import Path

OUTPUT_HELP = "a job's output: its directory, or its URL (then read through its mirror)"


def output_arg(text: str) -> Path:
    """An output named on the command line: a directory, or a URL whose mirror is brought
    up to date first (run/replicate.local_copy), so every command reads a directory."""
    if "://" not in text:
        return Path(text)
    from pipeline.errors import UsageError
    from pipeline.run.replicate import local_copy

    try:
        return local_copy(text)
    except (UsageError, OSError) as e:
        raise argparse.ArgumentTypeError(f"{text}: {str(e).splitlines()[0]}") from None
