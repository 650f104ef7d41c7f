"""Metrics, the feature networks behind them, which frames are scored, and the evaluate command."""
