"""Scoring detections: the VOC devkit's matcher (``matching``), a run matched once and every AP
read from it (``matched_run``), the VOC metric (``metrics``), the paired bootstrap over test
images (``bootstrap``) and the Lightning evaluation that training and exported files share
(``module``)."""
