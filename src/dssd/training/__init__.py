"""Training a detector: the LightningModule, DSSD's stages, the LR schedule, the callbacks and
reading checkpoint files."""
