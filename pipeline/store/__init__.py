"""The output directory: `durable` (temp name, fsync, rename, fsync the directory),
`journal` (every finished row at once), `sink` (journal -> part files -> results.parquet),
`parts` (checksummed parts, set aside), `part_check` (their damage check, started ahead;
parts known intact by their sha256),
`layout` (every file's name), `checkpoint` (resume state), `lock` (.lock), `run_record`
(run.json), `manifest` (job.json: is it the same job?), `book` (batch mode's batches, read
here too: batches not yet collected keep a changed job's --fresh waiting), `output_dir`
(which directories may be an output), `remote` (an output at a URL: its mirror pulled and
put, the lease), `synced` (what a mirror knows of the URL's copies), `shards`,
`unrecorded`.

May import: errors, schema, ahead, job (the fingerprint), input (locations: the input's identity).
"""
