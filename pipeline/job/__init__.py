"""The job file: `model` (the frozen dataclasses a validated job is), `load` (TOML -> Job,
every key checked, one line naming the key), `template` (`{column}` templates and why a row
cannot be sent), `checks` and `fields` (the value checks; one table of request fields for
[request], [request.extra] and [overrides] cells).

May import: errors. Every other stage may import job.
"""
