"""The plugin's recommenders (``PLUGIN_MODELS``: the models the CLI accepts)."""

from recbole_perpeft.model.perpeft import PerPEFT

#: The model classes the CLI accepts, by their class names.
PLUGIN_MODELS = (PerPEFT,)

__all__ = ["PLUGIN_MODELS", "PerPEFT"]
