"""Verbs of the ``llcm`` command line, one module each."""
