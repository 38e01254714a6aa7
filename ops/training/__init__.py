"""Shared training infrastructure: one small module per concern, reused by every trainer.

- ``runtime``:     accelerator creation (CPU gloo or GPU NCCL), seeding, RNG state capture.
- ``batches``:     the global batch plan: which items and which random numbers each step uses.
- ``ema``:         exponential moving average of weights.
- ``checkpoint``:  atomic, resumable checkpoints (safetensors) and atomic output directories.
- ``fingerprint``: content hashes deciding whether a checkpoint or a cache can be reused.
- ``loop``:        the training loop: resume, step, clip, EMA, log, checkpoint, progress bar.
- ``grids``:       image grid PNGs for people to look at.
- ``samples``:     per-class sample grids from any diffusers text-to-image pipeline.
- ``image_data``:  MedImgs manifest rows and their images as tensors.
- ``latent_data``: the latents stage's shards and prompt embeddings, with prompt dropout.
- ``launch``:      run a trainer in-process or under ``accelerate launch`` (the launched
                   command is ``python -m ops.entry STAGE``; the trainer's MLflow run is
                   ``ops.tracking.runs``).

Nothing here imports a pipeline stage (stages import this package, never the reverse) or
Dagster; torch and friends are imported by the modules that need them.
"""
