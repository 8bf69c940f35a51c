"""What the entry points do with their Hydra config: train, evaluate, export, predict, analyse
and the Table 4 ablation; shared parts in ``common``, the scripts' wrapper in ``entry``.
Each ``src/*.py`` imports its task's module inside its Hydra app, so ``--help`` skips Lightning."""
