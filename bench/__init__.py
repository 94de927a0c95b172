"""Benchmarks: ``python -m bench.<name>``. Not part of the installed package."""
