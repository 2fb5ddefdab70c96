"""Helpers shared by tests: tiny generated dataset trees (`trees`)."""
