"""Metrics, evaluation, visualisation and reports."""
