"""The job file: `model` (the frozen dataclasses a validated job is), `load` (TOML -> Job,
every key checked, one line naming the key), `checks` and `fields` (the value checks, one
table of request fields for [request], [request.extra] and [overrides] cells).

May import: errors, input.render (templates), labels.structured (tool schemas).
"""
