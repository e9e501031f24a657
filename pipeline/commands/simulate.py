"""`pipeline simulate`: the simulator's own flags and server (simulator/config.py, server.py),
and on start the key variable and URL that point a job at it."""

from __future__ import annotations

import argparse
import sys

from pipeline.job.model import ApiSettings
from pipeline.simulator.config import flag_parser
from pipeline.simulator.server import main

EXAMPLE_KEY = "sim-local-key"  # any 8+ characters: the client refuses shorter (send/scrub)


def simulate_parser() -> argparse.ArgumentParser:
    parser = flag_parser()
    parser.epilog = (
        f"A job runs against it with its key variable set to any value of 8+ characters: "
        f"{ApiSettings.api_key_env}={EXAMPLE_KEY} pipeline run JOB.toml --base-url "
        "http://127.0.0.1:PORT (printed on start with the port)."
    )
    return parser


def simulate(argv: list[str]) -> int:
    """The simulator's own main, saying on start how to point a job at it."""
    return main(argv, parser=simulate_parser(), announce=_announce)


def _announce(url: str, args: argparse.Namespace) -> None:
    print(key_hint(url, args.require_key_env), file=sys.stderr, flush=True)


def key_hint(url: str, require_key_env: str | None) -> str:
    """The one command line that points a job at the simulator at `url`."""
    name = ApiSettings.api_key_env
    if require_key_env:
        return (
            f'to run a job against it: {name}="${require_key_env}" pipeline run JOB.toml '
            f"--base-url {url} (it takes only the key in ${require_key_env}; a job whose "
            f"[api] api_key_env names another variable: set that one)"
        )
    return (
        f"to run a job against it: {name}={EXAMPLE_KEY} pipeline run JOB.toml --base-url {url}"
        f" (any key of 8+ characters; a job whose [api] api_key_env names another variable: "
        "set that one)"
    )
