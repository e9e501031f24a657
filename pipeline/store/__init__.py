"""The output directory: `durable` (temp name, fsync, rename, fsync the directory),
`journal` (every finished row at once), `sink` (journal -> part files -> results.parquet),
`parts` (checksummed parts, damage checks, set aside), `checkpoint` (lock, job.json,
resume state, run.json), `output_dir` (which directories may be an output).

May import: errors, job (the fingerprint), input.source (the row index name).
"""
