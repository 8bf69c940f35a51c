"""OmegaConf resolvers the configs use; registered by the entry points before composing."""

from __future__ import annotations

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """``${len:${data.class_names}}`` gives the number of classes from the class list."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))
