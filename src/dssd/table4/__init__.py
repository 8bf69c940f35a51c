"""The paper's Table 4 as one command (``src/ablation.py``, ``make ablation``): a
``src/train.py`` run per row and seed, in dependency order.

Rows (``conf/rows/table4.yaml``; a setting may pick others, e.g. ``conf/rows/necks.yaml``) are
the SSD prediction-module variants at stage 0, a control (the DSSD rows' stage 1 from the PM(c)
row without the deconvolution module), the DSSD fusions at stage 1 from the PM(c) row, and stage
2 from the product row. Every row runs once per seed in ``seeds``; a row starting from another
one starts from that row's run with the same seed, from its final weights (``last.ckpt``). Each
run is its own process, so it can use DDP, and its directory ``<out_dir>/<row id>/seed<seed>``
is a normal run directory that also holds the test detections as devkit result files
(``voc_results/``). A run that is done (``last.ckpt``, ``test_results.json`` and
``voc_results/`` there) is skipped unless forced; one that was interrupted resumes from its
``last.ckpt``.

At the end the runs become a table in Table 4's layout next to the paper's numbers (markdown and
CSV): per row the mean and standard deviation over the seeds of the VOC mAP, COCO AP and AP by
object size, and the difference from the row it ablates (``ablates``) with a 95% interval from a
paired bootstrap over the test images (``dssd.evaluation.bootstrap``). Then, with ``analysis=true``,
every row is analysed against the row it ablates (``src/analyze.py``'s comparison, over the seeds):
where the AP moves by class and object size, and which error types grow or shrink.

Modules: :mod:`~dssd.table4.rows` (the rows, seeds and run directories, and the plan),
:mod:`~dssd.table4.runner` (the runs, then the table and the analyses),
:mod:`~dssd.table4.statistics` (the figures and intervals) and :mod:`~dssd.table4.sweeps` (the
same rows as W&B sweep files). The table's markdown and CSV files are written by
:mod:`dssd.results.tables`.
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
