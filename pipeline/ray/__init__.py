"""Past one machine (`pipeline run --ray`): `lease` (one rate limit, cooldown and budget
for every worker, taken in leases), `actor` (the named Ray actor that holds them),
`driver` (shards, worker actors, the merge into one output).

Ray is an optional extra: nothing outside this package imports it.

May import: errors, job, send (limits, budget), run, store, and ray itself.
"""
