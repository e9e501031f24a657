"""Rows in: `source` (CSV / Parquet / JSONL read lazily, cells as written, ids), `render`
(row -> request body: the job's templates filled, overrides checked, empty prompts refused),
`tokens` (the local estimate), `sample` (`--sample`: rows chosen by their ids and a seed).

May import: errors, schema, ahead, job.
"""
