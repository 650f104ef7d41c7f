"""Video and image I/O, the projected-latent dataset, projection of videos to latents and the synthetic dataset."""
