"""What people read: `report` (tables, csv, json, markdown), `accuracy`, `html_report`,
`status` (how far a job got, read only), `compare` (outputs side by side, with
`agreement`'s statistics) and `estimate` (cost before spending; its `in
batches` and cache lines; `estimate_totals`, what it adds up).

May import: errors, schema, exact, pricing, job, input, providers, store (read only), run (plan,
progress), send (token_count), cache (prefix), api (estimate's pilot runs),
simulator (process), cascade (its account and estimate).
"""
