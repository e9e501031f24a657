"""The README's command reference is generated from --help: it cannot drift silently."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e import REPO


def test_readme_command_reference_matches_help():
    done = subprocess.run(
        [sys.executable, "scripts/readme_help.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_leads_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block
