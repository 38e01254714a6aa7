"""Stage 2, the diffusion model: SD components built from a preset (``presets``, ``tokenizer``),
the autoencoder, the latent cache, and the retrained teacher UNet."""
