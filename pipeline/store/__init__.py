"""The output directory: `durable` (temp name, fsync, rename, fsync the directory),
`journal` (every finished row at once), `sink` (journal -> part files -> results.parquet),
`parts` (checksummed parts, damage checks, set aside), `checkpoint` (lock, job.json,
resume state, run.json), `manifest` (job.json: is it the same job?), `output_dir` (which
directories may be an output).

May import: errors, schema, job (the fingerprint), batch (book). The batch book is read
for batches not yet collected: they keep a changed job's --fresh waiting.
"""
