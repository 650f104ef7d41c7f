"""Shared basics every layer uses: configuration, files, manifests, distributed set-up, progress, timing,
command-line helpers. Imports torch and the standard library only.
"""
