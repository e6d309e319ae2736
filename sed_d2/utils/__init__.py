"""Helpers that are neither model nor data code (visualisation)."""
