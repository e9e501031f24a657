"""Cascades (`[cascade]`): the strong model's labels at a fraction of its price.
`thresholds` (each stage's confidence threshold, set on a calibration sample with a stated
guarantee: pure statistics).

May import: errors.
"""
