"""Rows in: `source` (CSV / Parquet / JSONL read lazily, cells as written, ids), `render`
(row -> request body: templates, overrides, empty prompts), `tokens` (the local estimate).

May import: errors, job.fields, job.checks.
"""
