"""Command-line tools that are not experiments: benchmarks and checks."""
