"""One run: `plan` (every check that needs no network, --fresh, the key, damaged parts),
`runner` (feed -> workers -> sink, signals, stops and exit codes), `outcome` (one output
row from one answer), `progress` (the bar and the summary).

May import: errors, schema, pricing, job, providers, input, send, labels, cache, store.
"""
