"""Requests out and answers back: `client` (Messages requests, for runs, pilots and
count_tokens alike: pacing, attempts, a CallResult), `transport` (the HTTP seam, over
aiohttp; `httpx_transport` over httpx; `deadlines`: the attempts' deadlines, one timer
a length), `limits` (the Limiter: a capacity source, the gate, the cooldown, learned
limits), `buckets` (the local capacity: token buckets),
`pressure` (the one controller of the gate and the send rate; outages), `retry` (the
policy as pure functions, one table of transient answers, and `retrying`: the one retry
loop, of online requests, batch calls and batch downloads), `budget` (the `Budget` every
sender asks, and `LocalBudget`), `scrub` (the key out of everything a server sends),
`token_count`.

May import: errors, pricing, providers, job (settings only).
"""
