"""Command-line tools that are not experiments: the box-shape analysis of the paper's Table 1
(anchor_kmeans) and a grid of augmented training samples (show_augmentation)."""
