"""What people read: `report` (tables, csv, json, markdown), `accuracy`, `html_report`,
`status` (how far a job got, read only) and `estimate` (cost before spending).

May import: store (read only), run (estimate's pilot runs), send (count_tokens), pricing.
"""
