"""Shared by the tests: one fake clock, one simulator for the session (reset for each test
that asks for `sim`; `session_sim.started_over(latency_ms=...)` for a test that needs other
settings: no process of its own to start), and the CLI in this process (`cli`).

`FakeTime` is a tiny virtual-time scheduler. Inside `run()`, `sleep(d)` parks the caller
until the clock reaches now + d, and the clock jumps straight to the next wake-up whenever
every task is parked; outside it, `sleep(d)` just moves the clock. Nothing really waits,
and recorded times are exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from subprocess import CompletedProcess
from typing import Any

import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.ahead_helpers import forget_ahead
from tests.e2e import Cluster, run_in_process

# Bytecode caches on, whatever the environment says (some sandboxes set
# PYTHONDONTWRITEBYTECODE): without them every run rewrites each test module's asserts
# (pytest keeps them as .pyc: ~4 s of CPU for each xdist worker's collection), and every
# child (the simulator, `pipeline run`, Ray's workers) compiles the pipeline's modules again.
# They are __pycache__ directories, ignored by git. (This conftest is imported before the
# test modules, so their rewrites are cached from the first run on.)
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# The children (Ray's workers, simulators) get one OpenBLAS thread, as `pipeline`'s own
# processes do (commands/native.py): numpy, which pyarrow imports, spins one a core for
# nothing at its start (0.1 CPU-s a process, over a hundred processes a suite).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class FakeTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []  # every duration asked for, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._scheduling = False  # inside run(): sleepers park until their wake-up

    def clock(self) -> float:
        return self.now

    __call__ = clock  # usable wherever a clock function is wanted

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self._scheduling:  # outside run(): the clock just jumps
            self.now += max(seconds, 0.0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(50):  # let every runnable task run until it parks again
            await asyncio.sleep(0)
            # nothing in asyncio's ready queue but this task's turn: every other task is
            # parked, and more turns would change nothing (50 every time made the FakeTime
            # tests spend most of their time here; the same sleeps, in the same order)
            if not loop._ready:  # type: ignore[attr-defined]
                return

    async def run(self, *coros: Awaitable[Any]) -> list[Any]:
        """Run coroutines concurrently, in virtual time; their results in order."""
        self._scheduling = True
        tasks = [asyncio.ensure_future(c) for c in coros]
        await self._settle()
        while not all(t.done() for t in tasks):
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                raise AssertionError("deadlock: tasks wait on something other than sleep")
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            future.set_result(None)
            await self._settle()
        return [t.result() for t in tasks]

    def at(self, delay: float, action: Callable[[], Any]) -> Awaitable[None]:
        """A coroutine that does `action()` `delay` virtual seconds from now."""

        async def later() -> None:
            await self.sleep(delay)
            action()

        return later()


def drive(ft: FakeTime, *coros: Awaitable[Any]) -> list[Any]:
    return asyncio.run(ft.run(*coros))


@pytest.fixture(autouse=True)
def nothing_ahead_left() -> Iterator[None]:
    """Work started ahead (pipeline.ahead: a run's command line starts it, in-process
    too) is the process's: each test starts and ends with none of another's."""
    forget_ahead()
    yield
    forget_ahead()


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture(scope="session")
def session_sim() -> Iterator[SimulatorProcess]:
    """A simulator with its defaults, in its own process on loopback, for the whole session
    (one per pytest-xdist worker)."""
    with SimulatorProcess() as simulator:
        yield simulator


@pytest.fixture
def sim(session_sim: SimulatorProcess) -> SimulatorProcess:
    """The session's simulator, reset for this test: an empty ledger, fresh stats, cache,
    limits and fault sequences (a module that needs other settings defines its own `sim`)."""
    session_sim.reset()
    return session_sim


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CompletedProcess[str]]:
    """`cli("run", JOB, ..., env={...})`: the CLI's main() in this process, with the result
    shape of a subprocess (returncode, stdout, stderr)."""

    def run(*args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
        return run_in_process(capsys, *args, env=env)

    return run


RAY_CLUSTER_TAG_ENV = "PIPELINE_TEST_RAY_CLUSTER"  # in the environment of its processes


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One local Ray cluster (num_cpus=2) for every Ray test of the session that does not
    need one of its own: the in-process runs, and `pipeline run --ray` children through
    RAY_ADDRESS. Under pytest-xdist the modules using it are one unit of work (RAY_SHARED,
    the scheduler below): one worker, one test at a time."""
    ray = pytest.importorskip("ray")
    tag = f"pipeline-test-cluster-{uuid.uuid4()}"
    os.environ[RAY_CLUSTER_TAG_ENV] = tag  # inherited by the cluster's processes
    try:  # what ray.init puts in the environment stays: a child needs its RAY_AUTH_MODE
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        del os.environ[RAY_CLUSTER_TAG_ENV]
    yield Cluster(ray.get_runtime_context().gcs_address, tag)
    ray.shutdown()


# The Ray modules are two scheduling units, handed out first, each one test at a time on
# one pytest-xdist worker: the session cluster's (RAY_SHARED), and those whose run starts a
# cluster of its own (RAY_OWN). So at most two clusters are busy at once on 2 cores, one in
# each unit (a busy cluster takes a core: two units of the session's cluster each, or more
# units, made the suite slower, measured). A test never sees another unit's Ray processes:
# each cluster's tag, and each module's TAG, are its own worker's.
RAY_SHARED = ("test_ray_e2e.py", "test_ray_stops_e2e.py")
RAY_OWN = ("test_ray_own_cluster_e2e.py", "test_ray_storage_e2e.py")
RAY_MODULES = RAY_SHARED + RAY_OWN
# Then the other modules, one unit each, the longest first (their tests' seconds summed by
# --durations), so no long one is left to start while the other worker runs out of work.
# Modules not named here follow, as collected.
LONGEST_FIRST = (  # measured 2026-12-08 (make test --durations=0)
    "test_object_storage_e2e.py",
    "test_pressure_e2e.py",
    "test_batch_e2e.py",
    "test_resume_e2e.py",
    "test_cascade_e2e.py",
    "test_disk_full_e2e.py",
    "test_run_e2e.py",
    "test_guards_e2e.py",
    "test_hostile_server_e2e.py",
    "test_cascade_rounds.py",
    "test_maybe_billed_e2e.py",
    "test_integrity_e2e.py",
    "test_ray_shards.py",
    "test_html_report.py",
    "test_failures_e2e.py",
)
RANK = {name: rank for rank, name in enumerate(RAY_MODULES + LONGEST_FIRST)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Ray tests first: under pytest-xdist they are the two longest units of work (one
    test at a time in each), so they start at once; then the longest other modules."""
    items.sort(key=lambda item: RANK.get(item.path.name, len(RANK)))  # stable: else as found


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n N` (`--dist load`): each test module is a unit of work (its module-scoped
    fixtures set up once), and the Ray modules are two units (RAY_SHARED, RAY_OWN), handed
    out first (then the others in the collection's order: LONGEST_FIRST). (xdist's own `--dist
    loadgroup` marks no group under pytest 9: it renames `_nodeid`, which pytest 9 no
    longer reads.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesRayTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            name = module.rsplit("/", 1)[-1]
            if name in RAY_SHARED:
                return "ray-shared"
            return "ray-own" if name in RAY_OWN else module

    config.option.loadscopereorder = False  # the collection's order: Ray first
    return ModulesRayTogether(config, log)
