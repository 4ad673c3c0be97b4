"""Skipping inference: skipped steps cost nothing, and their inputs need not be produced."""

from .skipping import simulate_skips, skip_gru_skipping, skip_lstm_skipping

__all__ = ["skip_lstm_skipping", "skip_gru_skipping", "simulate_skips"]
