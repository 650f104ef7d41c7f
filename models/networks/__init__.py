"""The networks (space-time UNet, embedding adapter), the frozen encoders (VAE, CLIP) and how they are loaded
from checkpoints and folders.
"""
