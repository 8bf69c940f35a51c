"""What finished runs report, written and read back in one place.

- :mod:`dssd.results.tables`: the paper's table layouts as markdown and CSV (one table writer
  and one set of cell formats), for a run's ``test_results.md`` and ``make ablation``'s
  ``table4.md``, ``table4.csv`` and ``runs.csv``.
- :mod:`dssd.results.runs`: each run's ``test_results.json``, and finished runs as pandas
  DataFrames (Table 4's CSV files, test results, per-class AP, the CSV logs).
- :mod:`dssd.results.wandb`: everything said to W&B (the training callback's images and tables,
  prediction and analysis logs) and read back from it (online runs through W&B's public API,
  offline runs waiting for ``wandb sync``).

Runs that log to W&B also write the CSV log (``logger=wandb`` includes it), and the loaders read
an offline run's metrics from there: W&B's offline run file is a binary format private to W&B.
"""
