"""Privacy and utility of synthetic images: a memorisation audit against the MedImgs train
split, and train-on-synthetic-test-on-real utility.

Framework-free compute (no Dagster): ``normalise`` (pixel-space canonical form), ``nearest``
(nearest-neighbour search), ``threshold`` (the held-out reference distribution), ``bank`` (the
train split loaded once), ``audit`` (records and summaries), ``pairs`` (the closest pairs as a
picture) and ``utility`` (the fixed classifier recipe trained three ways).
"""
