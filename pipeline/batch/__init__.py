"""Batch mode, the Message Batches API at half the price: `book` (what was sent, on disk
before and after each create; it lives in store/book.py, its names importable from here),
`http` (the batch endpoints over httpx, retried by send/retry's one loop; `Clock`, batch
mode's one seam of time), `submit` (rows cut into batches; create, or adopt a batch whose
create answer was lost), `budget` (each batch's worst case in the run's budget, asked as
an online request asks it), `collect` (result lines -> output rows), `gather` (waiting on
batches, collecting each), `runner` (one pass: probe, settle, collect, submit, wait),
`progress`, `cancel`.

May import: errors, pricing, schema, job, input, providers, send (scrub, retry, budget,
client), labels, cache, store, run (plan, outcome, progress, runner).
"""
