"""Run the simulator as a child process: for tests, the demo (`--simulate`) and benchmarks.

with SimulatorProcess(rpm=60, seed=1) as sim:
    ...  # point a client at sim.base_url
    assert len(sim.ledger()) == 3
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from pipeline.errors import SimulatorStartError as SimulatorStartError
from pipeline.simulator.config import SimConfig, config_to_argv

KEY_ENV = "PIPELINE_SIMULATOR_REQUIRED_KEY"  # how the required key reaches the child
LISTENING = "listening on "
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding `pipeline/`
# Loopback needs no proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimulatorProcess:
    """`python -m pipeline.simulator` in a child process, stopped on exit.

    `env` is laid over this process's environment for the child.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 15.0,
        **overrides: Any,
    ) -> None:
        base = config if config is not None else SimConfig()
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self._started = self.config  # what `reset`'s settings are laid over
        self.base_url = ""
        self._env = dict(env or {})
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._returncode: int | None = None

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has exited (0 after a clean stop)."""
        return self._returncode if self._process is None else self._process.poll()

    def start(self) -> None:
        """Start the child and wait for its `listening on` line (SimulatorStartError if not)."""
        if self._process is not None:
            raise RuntimeError("the simulator is already running")
        argv = config_to_argv(self.config, key_env=KEY_ENV)
        # A file, not a pipe: nobody drains stderr while the server runs, and a full pipe
        # would block it; the file is read only to explain a failed start.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.simulator", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self._child_env(),
        )
        try:
            self.base_url = self._read_url(self._process)
        except SimulatorStartError:
            self.stop()
            raise

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **self._env}
        paths = [PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        if self.config.require_key is not None:
            env[KEY_ENV] = self.config.require_key
        return env

    def _read_url(self, process: subprocess.Popen[bytes]) -> str:
        assert process.stdout is not None
        deadline = time.monotonic() + self._start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:  # blocks in select(); loops only past unexpected stdout lines
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise self._start_error(f"did not start within {self._start_timeout_s:g} s")
                line = process.stdout.readline().decode(errors="replace").strip()
                if not line:
                    process.wait(timeout=5)
                    raise self._start_error(f"exited with code {process.returncode}")
                if line.startswith(LISTENING):
                    return line.removeprefix(LISTENING)

    def _start_error(self, what: str) -> SimulatorStartError:
        stderr = b""
        if self._stderr is not None:
            self._stderr.seek(0)
            stderr = self._stderr.read()[-4000:]
        detail = stderr.decode(errors="replace").strip() or "(no stderr)"
        return SimulatorStartError(f"the simulator {what}:\n{detail}")

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if it hangs. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
            self._returncode = process.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def ledger(self) -> list[dict[str, Any]]:
        """What the simulator billed, in billing order."""
        entries: list[dict[str, Any]] = self._call("GET", "/_sim/ledger")
        return entries

    def stats(self) -> dict[str, Any]:
        """Counts: requests, billed, by_status, refused {concurrency, outage, rate_limit},
        max_in_flight, in_flight, dropped, corrupted_streams; outage {start_ts, end_ts,
        active} (UNIX times, comparable with the ledger's `ts`)."""
        stats: dict[str, Any] = self._call("GET", "/_sim/stats")
        return stats

    def outage(self, for_s: float, *, after_s: float = 0.0) -> dict[str, Any]:
        """Answer every request 503 from `after_s` seconds from now, for `for_s` seconds."""
        window: dict[str, Any] = self._call(
            "POST", "/_sim/outage", {"for_s": for_s, "after_s": after_s}
        )
        return window

    def age_cache(self, seconds: float) -> None:
        """Let the prompt cache age `seconds` (entries expire as if that time had passed)."""
        self._call("POST", "/_sim/cache/age", {"s": seconds})

    def reset(self, **settings: Any) -> None:
        """Start over: clear the ledger, stats, cache, buckets, fault sequences and batches
        (their processing stopped), once the requests being answered have ended; the ledger
        file stays. `settings` (SimConfig's names, not host, port or ledger_path) are laid
        over those this process was started with, as if it had been started with them."""
        self._call("POST", "/_sim/reset", {"settings": settings} if settings else None)
        self.config = dataclasses.replace(self._started, **settings)

    @contextlib.contextmanager
    def started_over(self, **settings: Any) -> Iterator[SimulatorProcess]:
        """`reset(**settings)` for the block (a simulator with these settings, without the
        start of another process), and back to this process's own settings after it."""
        self.reset(**settings)
        try:
            yield self
        finally:
            self.reset()

    def _call(self, method: str, path: str, body: object = None) -> Any:
        if not self.base_url:
            raise RuntimeError("the simulator is not running")
        data = orjson.dumps(body) if body is not None else b"" if method == "POST" else None
        request = urllib.request.Request(self.base_url + path, method=method, data=data)
        with _OPENER.open(request, timeout=30) as response:  # a reset waits up to 10 s
            return orjson.loads(response.read())


SIMULATED_KEY = "sk-simulated-no-cost"  # what a --simulate run sends: the simulator takes any


@contextlib.contextmanager
def simulated_api() -> Iterator[str]:
    """`--simulate`: a simulator on a free loopback port for the length of the block; its
    base URL. The one place a run, a pilot or a count_tokens estimate starts one."""
    with SimulatorProcess() as simulator:
        yield simulator.base_url
