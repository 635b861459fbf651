"""Runs: the run directory (layout, checkpoints, index) and the one place that opens any run.

``directory`` writes and prepares run directories; ``open`` validates and loads them (trained
runs and baselines alike); ``baseline`` writes a baseline's run directory.
"""
