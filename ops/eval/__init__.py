"""Stage 4, evaluation: the benchmark grid (``plan``, ``context``, ``cells``, ``runner``,
``shards``), its metrics (``features``, ``distances``, ``reference``, ``metrics``), the domain
classifier whose features they use, reports, plots and the champion re-benchmark."""
