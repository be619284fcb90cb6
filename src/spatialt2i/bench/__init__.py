"""Evaluation: in-domain benchmark, public benchmark harness, reports."""
