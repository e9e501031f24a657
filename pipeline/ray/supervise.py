"""The driver's watch over its workers: every shard run to its end, a dead worker's shard
given to a new worker (RESTARTS times), and every way a run stops early made one stop for
the whole cluster, as a local run makes it: a signal (SIGINT / SIGTERM: no more rows, the
requests in flight finish within the grace period, a second signal cancels them), a
worker's own stop (the budget, the API refusing every request) or a worker lost for good.
Each ends with the rows finished kept, the results written, and one line.
"""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import ray

from pipeline.errors import ClusterLost as ClusterLost
from pipeline.errors import Interrupted, JobStopped
from pipeline.errors import WorkerLost as WorkerLost
from pipeline.job.model import absolute, mirror_of
from pipeline.ray.actor import NAMESPACE, actor_name
from pipeline.ray.worker import Shard, ShardWorker, stop_from
from pipeline.run.plan import Plan
from pipeline.run.progress import Progress
from pipeline.run.runner import grace_period
from pipeline.store.layout import SHARDS_DIR, shard_name

RESTARTS = 3  # a shard whose worker dies is given to a new one this many times
WAIT_S = 0.25  # the longest a signal waits before the workers hear of it
KILL_AFTER_S = 10.0  # past the grace period (or a second signal): workers still running are
# killed; their journals keep every answer that arrived


class StopSignals:
    """SIGINT / SIGTERM in the driver, recorded for the supervisor instead of a
    KeyboardInterrupt in the middle of a Ray call, or Ray's own SIGTERM handler (ray.init
    installs one, which exits 15): `install` again after ray.init."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._before: dict[int, Any] = {}

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                before = signal.signal(number, self._handle)
            except ValueError:  # not the main thread (a notebook's worker): Ray's rules
                return
            self._before.setdefault(number, before)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.received.append(number)

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for number, before in self._before.items():
            signal.signal(number, before if before is not None else signal.SIG_DFL)


class Supervisor:
    """Runs the shards on worker actors; `run` returns their results and why the run
    stopped early (None: it did not)."""

    def __init__(
        self,
        plan: Plan,
        shards: list[Shard],
        pool: Any,
        progress: Progress,
        signals: StopSignals,
        shards_dir: Path,  # OUTPUT/ray: shard K's output directory is shard-K in it
    ) -> None:
        self.plan, self.shards, self.pool, self.shards_dir = plan, shards, pool, shards_dir
        self.progress, self.signals = progress, signals
        self.restarts = dict.fromkeys(range(len(shards)), 0)
        self.workers: dict[int, Any] = {}
        self.running: dict[Any, int] = {}
        self.results: list[dict[str, Any]] = []
        self.stop: JobStopped | None = None
        self.counts: dict[str, Any] = {"ok": 0, "error": 0, "requests": 0, "cost": 0.0}
        self.pacing: list[str] = []  # the pool's notes, stamped as a local run's
        self._signals_seen, self._kill_at = 0, float("inf")
        self._killed: set[int] = set()  # shards whose worker was killed, said once

    def run(self) -> tuple[list[dict[str, Any]], JobStopped | None]:
        self._pass_signals()  # one that came while Ray started: nothing is launched
        if self.stop is None:
            for index in range(len(self.shards)):
                self._launch(index)
        shown = 0
        while self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=WAIT_S)
            self._pass_signals()
            self._keep_lease()
            shown = self._show(self._progress(), shown)
            for ref in ready:
                self._collect(ref)
            if time.monotonic() > self._kill_at:
                self._kill_running()
        if self.shards:
            self._progress()  # the last tallies
        return self.results, self.stop

    def _name(self, index: int) -> str:
        return f"{actor_name(self.plan.job.output)}-shard-{index}-{self.restarts[index]}"

    def _launch(self, index: int) -> None:
        job = self.plan.job
        shard = (self.shards_dir / shard_name(index)).resolve()
        shard_job = replace(job, input=absolute(job.input), output=shard)  # any worker's cwd
        if job.output_url is not None:  # no shared filesystem: the shard goes to the URL
            url = f"{job.output_url}/{SHARDS_DIR}/{shard_name(index)}"
            shard_job = replace(shard_job, output=mirror_of(url), output_url=url)
        name = self._name(index)
        worker = ShardWorker.options(name=name, namespace=NAMESPACE).remote()  # type: ignore[attr-defined]
        self.workers[index] = worker
        ref = worker.run.remote(shard_job, self.plan.api_key, self.shards[index], self.pool, name)
        self.running[ref] = index

    def _collect(self, ref: Any) -> None:
        index = self.running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            self.pool.lost.remote(self._name(index))  # its share and its reservations back
            self._lost(index)
            return
        self.results.append(result)
        if result["code"] and self.stop is None:  # the budget, the API: everyone stops
            self._stop_all(result["stopped"], result["code"], result["error"])

    def _lost(self, index: int) -> None:
        if self.stop is not None:
            return  # stopping anyway: its rows stay to do, its journal is kept
        if self.restarts[index] >= RESTARTS:
            self._stop_all(
                f"the worker of shard {index} died {RESTARTS + 1} times (a node lost, or out "
                "of memory): the rows finished are kept; run the same command to resume",
                WorkerLost.exit_code,
                WorkerLost.__name__,
            )
            return
        self.restarts[index] += 1
        self.progress.note(f"worker of shard {index} died: its rows go to a new worker")
        self._launch(index)

    def _kill_running(self) -> None:
        """The workers still running past the grace period (or KILL_AFTER_S after a second
        signal), killed; said once a worker, as the wait a user sees is theirs."""
        for index in self.running.values():
            ray.kill(self.workers[index], no_restart=True)
            if index not in self._killed:
                self._killed.add(index)
                self.progress.note(
                    f"the worker of shard {index} was still running {KILL_AFTER_S:.0f} s "
                    "after the requests in flight were cancelled: stopped; every answer it "
                    "journaled is kept"
                )

    def _keep_lease(self) -> None:
        """An output URL's lease renewed when due (this loop holds the event loop its
        keep_pushing task would run on); stopped, as a local run, if it could run out."""
        reason = self.plan.sink.keep_lease()
        if reason is not None and self.stop is None:
            self._stop_all(str(reason), reason.exit_code, type(reason).__name__)

    def _stop_all(self, message: str, code: int, error: str) -> None:
        """`error`: the stop's class name: the driver's stop and every worker's are of it."""
        self.stop = stop_from(error, message, code)
        for index in self.running.values():
            self.workers[index].stop.remote(message, code, error)

    def _pass_signals(self) -> None:
        """As a local run: the first signal stops taking rows and lets the requests in
        flight finish for the grace period; the second cancels them."""
        while self._signals_seen < len(self.signals.received):
            number = self.signals.received[self._signals_seen]
            self._signals_seen += 1
            grace = grace_period()
            if self._kill_at == float("inf"):  # the first signal (an earlier stop keeps its reason)
                name = signal.Signals(number).name
                if self.stop is None:
                    self.stop = Interrupted(
                        f"stopped by {name}; finished rows are saved: run the same command "
                        "to resume",
                        number,
                    )
                self.progress.note(
                    f"{name}: finishing the requests in flight (up to {grace:.0f} s);"
                    " press Ctrl-C again to cancel them"
                )
                self._kill_at = time.monotonic() + grace + KILL_AFTER_S
            else:
                self._kill_at = min(self._kill_at, time.monotonic() + KILL_AFTER_S)
            for index in self.running.values():
                self.workers[index].interrupt.remote(number, grace)

    def _progress(self) -> dict[str, Any]:
        try:
            counts: dict[str, Any] = ray.get(self.pool.progress.remote())
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as e:
            raise ClusterLost(
                "the Ray cluster lost the job's pacing actor (a node or the cluster went "
                "down): the rows finished are kept in the shards; run the same command to "
                "resume"
            ) from e
        elapsed = int(time.monotonic() - self.progress.started)
        for note in counts["notes"]:
            self.progress.note(note)
            self.pacing.append(f"{elapsed // 60}:{elapsed % 60:02d} {note}")
        self.counts = counts
        return counts

    def _show(self, counts: dict[str, Any], shown: int) -> int:
        """The pool's tallies on the driver's bar, as a local run shows its own."""
        progress = self.progress
        done = int(counts["ok"] + counts["error"])
        progress.bar.update(max(0, done - shown))
        minutes = max(time.monotonic() - progress.started, 1e-9) / 60.0
        progress.bar.set_postfix_str(
            f"ok={int(counts['ok']):,} err={int(counts['error']):,} "
            f"{counts['requests'] / minutes:,.0f} req/min ${counts['cost']:,.4f} | "
            f"{len(self.running)} workers"
        )
        return max(shown, done)
