"""What finished runs report, written and read back in one place: the paper's tables (``tables``),
``test_results.json`` and runs as DataFrames (``runs``), and everything W&B (``wandb``)."""
