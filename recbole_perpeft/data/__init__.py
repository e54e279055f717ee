"""Data room: datasets, item content, content cache, converters, embedded datasets."""
