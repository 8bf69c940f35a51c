"""Speed benchmarks of the detectors, kept out of the installed ``dssd`` package.

Run from the repository root: ``python -m benchmarks.speed`` (the paper's Table 7) and
``python -m benchmarks.baselines`` (the project's hot paths against torchvision and pycocotools).
"""
