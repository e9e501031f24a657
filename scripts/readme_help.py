"""Write the README's command reference from the CLI's own `--help` (or --check it).

python scripts/readme_help.py          # rewrite the block between the help markers
python scripts/readme_help.py --check  # exit 1 if the README has drifted
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from pathlib import Path

from pipeline.cli import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- help:start -->", "<!-- help:end -->"


def commands() -> list[list[str]]:
    """`--help`, then every subcommand the parser has, in its order (`cancel` included: a
    list written by hand missed it)."""
    found = [["--help"]]
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [[name, "--help"] for name in action.choices]
    return found


def help_text(args: list[str]) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        main(args)
    return buffer.getvalue().rstrip()


def reference() -> str:
    blocks = [f"```\n$ pipeline {' '.join(args)}\n{help_text(args)}\n```" for args in commands()]
    return f"{START}\n" + "\n\n".join(blocks) + f"\n{END}"


def main_script() -> int:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: pin it
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    updated = pattern.sub(lambda _: reference(), text)
    if "--check" in sys.argv[1:]:
        if updated != text:
            print("README.md command reference is out of date: run `make docs`")
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main_script())
