"""Training a detector: the LightningModule (``module``), DSSD's stages (frozen modules, initial
weights from another run: ``stages``), the learning-rate schedule (``schedules``), the training
callbacks (``callbacks``) and reading checkpoint files (``checkpoints``)."""
