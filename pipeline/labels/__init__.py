"""Answers -> label columns: `extract` (text / choice / json / tool), `structured` (typed
fields, exact integers), `reparse` (relabel stored answers, sending nothing).

May import: errors, schema, job (the [extract] spec), store (reparse rewrites parts).
"""
