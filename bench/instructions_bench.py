"""Instructions a row of `pipeline run`, against plain aiohttp's, counted by valgrind.

CPU seconds on these machines move by up to a third from one minute to the next (the
overhead lines of `bench.limits_bench` print five pairs for that reason), so a change of a
few percent to the per-row path cannot be told from noise by timing it. The instructions a
process executes in user space repeat within 0.2% from run to run: the figure to judge such
a change by.

Each side (ours: the overhead bench's job, 64 in flight against an instant simulator; the
floor: the same plain aiohttp loop) runs twice under callgrind, at `small` and `big` rows;
a row's instructions are the difference over the rows between, so start-up, imports and
the end cancel out. The kernel's work (the sockets, the journal's writes) is not counted,
and most of it is the same on both sides: the ratio of CPU seconds is smaller than this
one. The fixed part (start-up, imports, the end) is printed beside it.

Needs valgrind (`apt-get install valgrind`); without it, says so and exits 0. Takes about
two minutes: valgrind runs a process some thirty times slower.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import ENV, REPO, command, make_job
from bench.limits_bench import floor_command
from pipeline.simulator.process import SimulatorProcess

COUNTED = re.compile(r"Collected : (\d+)")


def instructions(argv: list[str]) -> int:
    """The instructions `argv` executed in user space, all its threads (not its children)."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        cwd=REPO, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    found = COUNTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"under valgrind, {argv[:4]} failed: {done.stderr.strip()[-500:]}")
    return int(found.group(1))


def per_row(
    name: str, small: int, big: int, argv_for: Callable[[int], list[str]]
) -> tuple[float, float]:
    """Instructions a row and the fixed part, from one run at `small` rows and one at `big`."""
    low, high = instructions(argv_for(small)), instructions(argv_for(big))
    row = (high - low) / (big - small)
    print(f"  {name}: {low:,} at {small:,} rows, {high:,} at {big:,}", flush=True)
    return row, low - small * row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--big", type=int, default=2500)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("instructions: skipped, valgrind is not installed (apt-get install valgrind)")
        return
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:

        def ours(rows: int) -> list[str]:
            directory = Path(tmp) / f"rows-{rows}"
            directory.mkdir()
            return command(make_job(directory, rows, 64), sim.base_url)

        mine, mine_fixed = per_row("pipeline run", args.small, args.big, ours)
        floor, floor_fixed = per_row(
            "plain aiohttp", args.small, args.big, lambda rows: floor_command(sim.base_url, rows)
        )
    print(
        f"instructions a row (user space, callgrind): pipeline run {mine / 1e3:,.0f}k, "
        f"plain aiohttp {floor / 1e3:,.0f}k = {mine / floor:.2f}x | fixed part (start-up, "
        f"imports, the end): {mine_fixed / 1e6:,.0f}M against {floor_fixed / 1e6:,.0f}M"
    )


if __name__ == "__main__":
    main()
