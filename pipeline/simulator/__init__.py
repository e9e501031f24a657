"""The local Messages API server the tests, the demo and the benchmarks use (its own
process: `python -m pipeline.simulator`).

May import: errors, input (tokens).
"""
