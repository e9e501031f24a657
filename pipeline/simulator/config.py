"""The simulator's settings: one dataclass, and the command-line flags that map onto it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from pipeline.simulator.profiles import check_skill, parse_skill

FAULT_KINDS = ("429", "500", "529", "drop")
BATCH_RATES = ("batch_errored_rate", "batch_expired_rate", "batch_lose_create_rate")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulator behaves. Rates are per minute; None means unlimited."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    burst_s: float = 2.0
    max_concurrency: int | None = None
    fail_rate: float = 0.0
    fail_429: float = 0.0
    fail_500: float = 0.0
    fail_529: float = 0.0
    fail_drop: float = 0.0
    fail_corrupt_event: float = 0.0  # share of streamed answers with one garbled event
    outage_after_s: float = 0.0  # the outage starts this long after the first request...
    outage_for_s: float = 0.0  # ...and lasts this long (0: no outage)
    seed: int = 0
    ledger_path: str | None = None
    require_key: str | None = None
    batch_latency_s: float = 1.0  # how long a message batch takes to end after its create
    batch_errored_rate: float = 0.0  # share of batch requests ending errored (overloaded)
    batch_expired_rate: float = 0.0  # share of batch requests ending expired
    batch_lose_create_rate: float = 0.0  # share of batch creates whose answer is lost...
    batch_lose_first_creates: int = 0  # ...and the first N creates' answers lost for sure
    batch_max_bytes: int = 256 * 1024 * 1024  # a batch create's body limit (the API's 256 MB)
    cache_min_tokens: int | None = None  # every model's minimum cacheable prefix (None: its own)
    # (model name substring, skill) before the built-in profiles: see `profiles`.
    skills: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "fail_rate",
            "outage_after_s",
            "batch_latency_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("rpm", "itpm", "otpm", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None for unlimited)")
        if self.burst_s <= 0:
            raise ValueError("burst_s must be > 0")
        if self.outage_for_s < 0:
            raise ValueError("outage_for_s must be >= 0 (0 for no outage)")
        if not 0.0 <= self.fail_corrupt_event <= 1.0:
            raise ValueError("fail_corrupt_event must be between 0 and 1")
        self._check_batch_faults()
        for _, skill in self.skills:
            check_skill(skill)
        rates = self.fault_rates()
        if any(rate < 0 for rate in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates must be >= 0 and add up to at most 1")

    def _check_batch_faults(self) -> None:
        for name in BATCH_RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.batch_errored_rate + self.batch_expired_rate > 1.0 + 1e-9:
            raise ValueError("batch_errored_rate and batch_expired_rate add up to more than 1")
        if self.batch_lose_first_creates < 0:
            raise ValueError("batch_lose_first_creates must be >= 0")
        if self.batch_max_bytes <= 0:
            raise ValueError("batch_max_bytes must be > 0")
        if self.cache_min_tokens is not None and self.cache_min_tokens < 1:
            raise ValueError("cache_min_tokens must be >= 1 (or None for each model's own)")

    def fault_rates(self) -> dict[str, float]:
        """Probability of each fault: fail_rate split equally, plus the individual rates."""
        share = self.fail_rate / len(FAULT_KINDS)
        return {
            "429": share + self.fail_429,
            "500": share + self.fail_500,
            "529": share + self.fail_529,
            "drop": share + self.fail_drop,
        }


def flag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline simulate",
        description="A local Anthropic-compatible Messages API simulator.",
    )
    add = parser.add_argument
    add(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    add(
        "--port",
        type=int,
        default=0,
        help="port to listen on (default 0: a free one, printed on start)",
    )
    add(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds before each answer begins (default 0)",
    )
    add("--latency-jitter-ms", type=float, default=0.0, help="uniform +- jitter on the latency")
    add("--rpm", type=float, help="requests a minute (default unlimited)")
    add("--itpm", type=float, help="input tokens a minute (default unlimited)")
    add("--otpm", type=float, help="output tokens a minute (default unlimited)")
    add("--burst-s", type=float, default=2.0, help="bucket capacity in seconds of rate")
    add(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="answer requests beyond N in flight 429 'too many concurrent requests', as the"
        " gateway does (default no cap)",
    )
    add("--fail-rate", type=float, default=0.0, help="total fault rate, split 429/500/529/drop")
    for kind in ("429", "500", "529", "drop"):
        add(f"--fail-{kind}", type=float, default=0.0, help=f"extra rate of {kind} faults")
    add(
        "--fail-corrupt-event",
        type=float,
        default=0.0,
        metavar="F",
        help="share of streamed answers with one middle event whose data is not JSON",
    )
    add(
        "--outage-after",
        type=float,
        default=0.0,
        metavar="S",
        help="start the outage S seconds after the first request (default 0)",
    )
    add(
        "--outage-for",
        type=float,
        default=0.0,
        metavar="S",
        help="answer every request 503 for S seconds, then normally (default 0: no outage)",
    )
    add(
        "--batch-latency-s",
        type=float,
        default=1.0,
        metavar="S",
        help="a message batch ends S seconds after its create (default 1.0)",
    )
    _add_batch_fault_flags(parser)
    add(
        "--cache-min-tokens",
        type=int,
        metavar="N",
        help="cache prompt prefixes from N tokens for every model (default each model's own"
        " minimum: 4096 Opus 4.5/4.6 and Haiku 4.5, 2048 Opus 4.7 and Haiku 3/3.5, else 1024)",
    )
    add(
        "--skill",
        action="append",
        type=parse_skill,
        default=[],
        metavar="MODEL=S",
        help="label right (at temperature 0) on a share S of texts for models whose name"
        " contains MODEL, instead of the built-in profile (Opus 0.95, Sonnet 0.9, Haiku 4.5"
        " 0.82, Haiku 3 0.7, others 0.8); repeatable, the first match wins",
    )
    add(
        "--seed", type=int, default=0,
        help="seed of the faults and sampled answers (default 0): the same seed, the same run",
    )  # fmt: skip
    add("--ledger", metavar="FILE", help="append each billed entry to FILE as JSON lines")
    add("--require-key-env", metavar="NAME", help="require the API key held in env var NAME")
    return parser


def _add_batch_fault_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--batch-errored-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="share of batch requests (seeded) that end errored with the transient"
        " overloaded_error; unbilled, a later batch draws again",
    )
    add(
        "--batch-expired-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="share of batch requests (seeded) that end expired; unbilled",
    )
    add(
        "--batch-lose-create-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="share of batch creates (seeded) whose answer is lost: the batch is created,"
        " processed and listed, but the connection closes without a response",
    )
    add(
        "--batch-lose-first-creates",
        type=int,
        default=0,
        metavar="N",
        help="lose the answer of the first N batch creates (as above) for sure",
    )
    add(
        "--batch-max-bytes",
        type=int,
        default=256 * 1024 * 1024,
        metavar="N",
        help="answer a batch create whose body exceeds N bytes 413 request_too_large"
        " (default 268435456, the API's 256 MB; /v1/messages keeps its 32 MB)",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """A SimConfig from parsed flags; ValueError names a bad flag or a missing key variable."""
    require_key = None
    if args.require_key_env:
        require_key = os.environ.get(args.require_key_env)
        if not require_key:
            raise ValueError(f"environment variable {args.require_key_env} is not set")
    return SimConfig(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        rpm=args.rpm,
        itpm=args.itpm,
        otpm=args.otpm,
        burst_s=args.burst_s,
        max_concurrency=args.max_concurrency,
        fail_rate=args.fail_rate,
        fail_429=args.fail_429,
        fail_500=args.fail_500,
        fail_529=args.fail_529,
        fail_drop=args.fail_drop,
        fail_corrupt_event=args.fail_corrupt_event,
        outage_after_s=args.outage_after,
        outage_for_s=args.outage_for,
        seed=args.seed,
        ledger_path=args.ledger,
        require_key=require_key,
        batch_latency_s=args.batch_latency_s,
        batch_errored_rate=args.batch_errored_rate,
        batch_expired_rate=args.batch_expired_rate,
        batch_lose_create_rate=args.batch_lose_create_rate,
        batch_lose_first_creates=args.batch_lose_first_creates,
        batch_max_bytes=args.batch_max_bytes,
        cache_min_tokens=args.cache_min_tokens,
        skills=tuple(args.skill),
    )


def config_to_argv(config: SimConfig, *, key_env: str | None = None) -> list[str]:
    """Flags that recreate `config`; the key itself never goes on a command line."""
    argv = ["--host", config.host, "--port", str(config.port), "--seed", str(config.seed)]
    for flag, value in (
        ("--latency-ms", config.latency_ms),
        ("--latency-jitter-ms", config.latency_jitter_ms),
        ("--rpm", config.rpm),
        ("--itpm", config.itpm),
        ("--otpm", config.otpm),
        ("--burst-s", config.burst_s),
        ("--max-concurrency", config.max_concurrency),
        ("--fail-rate", config.fail_rate),
        ("--fail-429", config.fail_429),
        ("--fail-500", config.fail_500),
        ("--fail-529", config.fail_529),
        ("--fail-drop", config.fail_drop),
        ("--fail-corrupt-event", config.fail_corrupt_event),
        ("--outage-after", config.outage_after_s),
        ("--outage-for", config.outage_for_s),
        ("--batch-latency-s", config.batch_latency_s),
        ("--batch-errored-rate", config.batch_errored_rate),
        ("--batch-expired-rate", config.batch_expired_rate),
        ("--batch-lose-create-rate", config.batch_lose_create_rate),
        ("--batch-lose-first-creates", config.batch_lose_first_creates),
        ("--batch-max-bytes", config.batch_max_bytes),
        ("--cache-min-tokens", config.cache_min_tokens),
        ("--ledger", config.ledger_path),
        ("--require-key-env", key_env if config.require_key else None),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for pattern, skill in config.skills:
        argv += ["--skill", f"{pattern}={skill!r}"]
    return argv
