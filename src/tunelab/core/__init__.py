"""The bottom layer: user-facing errors, the config base class, deferred imports, metrics.

Nothing here imports torch or any other tunelab package.
"""
