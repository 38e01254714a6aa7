"""Cleaning raw sources into MedImgs: safe enumeration, decoding, normalisation, dedup, split.
``build.build_medimgs`` is the stage function."""
