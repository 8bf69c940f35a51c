"""The paper's Table 4 as one command (``src/ablation.py``): a ``src/train.py`` process per row
and seed in dependency order (done runs skipped, interrupted ones resumed), then the table beside
the paper's numbers with each row's difference from the row it ablates and its paired-bootstrap
interval, and (``analysis=true``) each row analysed against that row. Modules: ``rows`` (rows,
seeds, plan), ``runner``, ``statistics`` (figures, intervals) and ``sweeps`` (W&B sweep files).
"""
