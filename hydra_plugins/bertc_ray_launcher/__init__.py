"""bertc's Hydra launcher plugin for hydra/launcher=ray (ray_launcher.py); Hydra takes launchers from hydra_plugins."""
