"""Raw medical image sources: the registry, fetching by kind, the phantom generator, the raw
index. ``materialize.materialize_raw_sources`` is the stage function."""
