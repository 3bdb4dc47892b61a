"""Generators of data with known structure."""
