"""Framework-free compute for the LLCM pipeline: no Dagster imports below this package."""
