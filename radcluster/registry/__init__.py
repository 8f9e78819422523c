"""The model registry: immutable model versions in safe formats (versions), and which one serves (champion)."""
