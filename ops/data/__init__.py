"""Stage 1, data: raw sources in (``sources``), the cleaned MedImgs set out (``cleaning``), and
the prompt each image's labels make (``prompts``)."""
