"""Prompt caching that pays (`[request] cache = "auto"`): `prefix` (the prefix every row
shares, where its one breakpoint goes, the TTL, whether a write pays) and `warmup` (the
first request of a prefix alone, the fan-out after its answer).

May import: job, input (tokens), providers (base).
"""
