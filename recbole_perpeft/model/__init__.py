"""The plugin's recommenders. ``__all__`` lists the model names the CLI accepts."""

from recbole_perpeft.model.perpeft import PerPEFT

__all__ = ["PerPEFT"]
