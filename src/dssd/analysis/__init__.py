"""Analyses of a detector's output beyond its mAP."""
