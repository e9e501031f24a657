"""Requests out and answers back: `client` (the one retry loop of Messages requests,
for runs, pilots and count_tokens alike; batch calls retry in batch/http), `transport`
(the HTTP seam: aiohttp, httpx), `limits` (token buckets, the gate, learned limits),
`pressure` (concurrency caps, outages), `retry` (the policy as pure functions), `budget`,
`scrub` (the key out of everything a server sends), `token_count`.

May import: errors, pricing, providers, job (settings only).
"""
