"""Cached features for frozen backbones (work in progress)."""
