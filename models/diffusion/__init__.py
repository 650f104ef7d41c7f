"""The noise schedule, the training objective, the samplers and the sampling loop."""
