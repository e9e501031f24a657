"""Past one machine (`pipeline run --ray`): `lease` (one rate limit, cooldown and budget
for every worker, taken in leases), `pool` (the cluster's side: its sums), `budget` (a
worker's side of the one budget: it waits on the actor for a settle, never polls),
`actor` (the named Ray actor that holds them), `outage` (one outage verdict and one probe
at a time for every worker), `driver` (shards, worker actors, the merge into one output).

Ray is an optional extra: nothing outside this package imports it.

`from pipeline.ray import process`: `process(ds, job)` adds the result columns to a
Ray Dataset (dataset.py).

May import: errors, schema, pricing, job, input, providers, send (client, limits, buckets,
pressure, budget), labels, run, store. And Ray itself, which nothing outside this package imports.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """`process` imports Ray, on first use only: `lease` needs no Ray at all."""
    if name == "process":
        from pipeline.ray.dataset import process

        return process
    raise AttributeError(name)
