"""Dagster definitions, resources, jobs, schedules, and the ``llcm`` command line."""
