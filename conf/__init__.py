"""bertc's Hydra configs, shipped inside the package as `bertc.conf` (see pyproject.toml)."""
