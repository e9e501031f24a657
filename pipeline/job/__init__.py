"""The job file: `model` (the frozen dataclasses a validated job is), `load` (TOML -> Job,
every key checked, one line naming the key), `template` (`{column}` templates and why a row
cannot be sent), `checks` and `fields` (the value checks; one table of request fields for
[request], [request.extra] and [overrides] cells), `options` (RunOptions: what a run may be
told besides its job file, declared once).

May import: errors, providers (registry). Every other stage may import job; load reads the
providers' registry for the formats a job file may name, and what each supports.
"""
