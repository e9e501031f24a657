"""Cascades (`[cascade]`): the strong model's labels at a fraction of its price.
`thresholds` (each stage's confidence threshold, set on a calibration sample with a stated
guarantee: pure statistics), `phases` (a phase: one stage's requests for some rows, run as
an ordinary job in a directory of its own), `routing` (a phase's answers -> each row's label
and confidence; the calibration -> plan.json), `run` (calibration, plan, stages), `assemble`
(the output's results.parquet and run.json from the phases), `account` (what the cascade
did and cost, for the summary and the report).

May import: errors, schema, exact, job, input, store, run (plan, progress: a phase is a run).
"""
