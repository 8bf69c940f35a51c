"""DSSD / SSD detectors."""
