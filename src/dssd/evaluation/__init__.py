"""Scoring detections: the VOC devkit's matcher, matched runs and their APs, the VOC metric, the
paired bootstrap over test images and the Lightning evaluation of checkpoints and exported files."""
