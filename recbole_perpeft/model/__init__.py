"""The plugin's recommenders. ``__all__`` lists the model names the CLI accepts."""

__all__: list[str] = []
