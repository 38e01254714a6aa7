"""Dagster software-defined assets, one module per stage. Thin: read config and resources, call
``ops``, attach metadata and checks. ``pipeline.definitions`` collects every module here."""
