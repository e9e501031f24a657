"""What one simulator remembers between requests: limits, cache, ledger, stats, fault draws."""

from __future__ import annotations

import hashlib
import itertools
import random
import secrets
import time
from collections import Counter

from aiohttp import web

from pipeline.simulator.answers import Answer, Directives, Prompt, generate, request_digest
from pipeline.simulator.buckets import Clock, RateLimiter
from pipeline.simulator.config import SimConfig
from pipeline.simulator.ledger import Ledger, Stats
from pipeline.simulator.outage import OutageWindow
from pipeline.simulator.prompt_cache import PromptCache


class SimulatorState:
    """Everything one server remembers between requests."""

    def __init__(self, config: SimConfig, clock: Clock = time.monotonic) -> None:
        self.started = config  # what /_sim/reset's settings are laid over
        self.clock = clock  # every timed rule (buckets, cache lifetimes, outage) reads this
        self.ledger = Ledger(config.ledger_path)
        self.stats = Stats()
        self._id_prefix = secrets.token_hex(4)  # ids stay unique across restarts
        self._id_counter = itertools.count(1)
        self.configure(config)

    def check(self, config: SimConfig) -> SimConfig:
        """`config`, if this server can take it: ValueError if it moves what is fixed at
        the start (the address, the ledger file)."""
        fixed = ("host", "port", "ledger_path")
        moved = [n for n in fixed if getattr(config, n) != getattr(self.started, n)]
        if moved:
            raise ValueError(f"{', '.join(moved)}: fixed when the server starts")
        return config

    def configure(self, config: SimConfig) -> None:
        """Behave as a server started with `config` would, from a fresh start (reset); the
        ledger file, the address and the request ids go on as they were."""
        self.config = self.check(config)
        clock = self.clock
        self.limiter = RateLimiter(config.rpm, config.itpm, config.otpm, config.burst_s, clock)
        self.cache_age_s = 0.0  # /_sim/cache/age: entries expire as if this much time passed
        self.cache = PromptCache(lambda: clock() + self.cache_age_s, config.cache_min_tokens)
        self.outage = OutageWindow(config.outage_after_s, config.outage_for_s, clock)
        rates = config.fault_rates()
        cumulative = itertools.accumulate(rates.values())
        self._fault_thresholds = list(zip(rates, cumulative, strict=True))
        self.reset()

    def reset(self) -> None:
        """Back to the state of a fresh start (the ledger file is kept: it is the paid record)."""
        self.fault_rng = random.Random(self.config.seed)
        self.latency_rng = random.Random(f"latency:{self.config.seed}")
        # Its own sequence: adding stream corruption leaves the other faults' draws as they were.
        self.corrupt_rng = random.Random(f"corrupt:{self.config.seed}")
        self.attempts: Counter[tuple[str, bytes]] = Counter()
        self.ledger.clear()
        self.stats.clear()
        self.cache.clear()
        self.limiter.reset()
        self.outage.reset()

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{self._id_prefix}{next(self._id_counter):012x}"

    def attempt(self, kind: str, key: bytes | bytearray) -> int:
        """Count one more attempt of `kind` (a scripted directive) for `key`; its number."""
        counted = (kind, hashlib.sha256(key).digest())
        self.attempts[counted] += 1
        return self.attempts[counted]

    def draw_fault(self) -> str | None:
        """The injected fault for the next request in arrival order, if any."""
        if not self._fault_thresholds[-1][1]:
            return None
        draw = self.fault_rng.random()
        return next((kind for kind, limit in self._fault_thresholds if draw < limit), None)

    def draw_corrupt_event(self, events: int) -> int | None:
        """For a stream of `events` events: the index of the one to garble (never the first
        or the last), drawn at the `fail_corrupt_event` rate, else None."""
        rate = self.config.fail_corrupt_event
        if not rate or events < 3 or self.corrupt_rng.random() >= rate:
            return None
        return self.corrupt_rng.randint(1, events - 2)

    def answer(self, prompt: Prompt, directives: Directives) -> Answer:
        """The answer to a valid request, by this simulator's seed, skills and answer draws.
        Above temperature 0 a request draws from a source of its own, keyed by its content
        and temperature and by how many identical requests came before it: identical
        requests differ, and a session answers the same whatever order its requests arrive
        in (64 in flight arrive in a new order every run; one stream drawn in arrival order
        made the same job's labels, and a bench's figures, differ from run to run). A retry
        is one more identical request: faults and timeouts move the draws along."""
        config = self.config
        rng = None
        if prompt.temperature > 0:
            key = request_digest(prompt, config.seed) + repr(prompt.temperature).encode()
            rng = random.Random(key + self.attempt("answer", key).to_bytes(8, "big"))
        return generate(prompt, config.seed, directives, skills=config.skills, rng=rng)

    def latency_s(self) -> float:
        config = self.config
        if not config.latency_ms and not config.latency_jitter_ms:
            return 0.0
        jitter = self.latency_rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        return max(0.0, config.latency_ms + jitter) / 1000.0


STATE = web.AppKey("simulator_state", SimulatorState)
