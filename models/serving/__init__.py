"""Animating photos at scale (animate, catalogue), the web demo and the offline quickstart."""
