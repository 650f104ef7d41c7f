"""The diffusers pipeline, long (windowed) videos, the model card and checkpoint-to-folder conversion."""
