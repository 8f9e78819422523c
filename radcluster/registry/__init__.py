"""The model registry: immutable model versions in safe formats (versions), and which one serves (champion)."""

# The registry used when neither a flag, the job file nor $RADCLUSTER_REGISTRY names one
# (relative to the working folder): where `train` writes versions and `models list` looks.
# It lives here, in a module that imports nothing, so the CLI can show it in its help.
DEFAULT_REGISTRY = "models"
