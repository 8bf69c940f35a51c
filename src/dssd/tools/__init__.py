"""Command-line tools that are not experiments: anchor_coverage, anchor_kmeans (Table 1),
context_reach, network_table (Table 2) and show_augmentation."""
