"""The paper's Table 4 as one command (``src/ablation.py``): a ``src/train.py`` process per row
and seed in dependency order (done runs skipped, interrupted ones resumed), then the table beside
the paper's numbers with each row's difference from the row it ablates and its paired-bootstrap
interval, and (``analysis=true``) each row analysed against that row. Modules: ``rows`` (rows,
seeds, plan), ``runner``, ``statistics`` (figures, intervals) and ``sweeps`` (W&B sweep files).
"""

from dssd.table4.rows import Row, Step, parse_rows, parse_seeds, plan, run_dir, select_rows
from dssd.table4.runner import run_ablation, train_command
from dssd.table4.sweeps import write_sweeps

__all__ = [
    "Row",
    "Step",
    "parse_rows",
    "parse_seeds",
    "plan",
    "run_ablation",
    "run_dir",
    "select_rows",
    "train_command",
    "write_sweeps",
]
