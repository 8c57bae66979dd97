"""Where bertc's Hydra configs are: the installed package's `bertc/conf`, else the source checkout's `conf/`.

`python -m bertc` from inside a clone imports the clone's `bertc/` folder (the current directory comes
first on sys.path), not the installed package, so the configs must be found from whichever `bertc`
folder Python picked: the wheel ships them as `bertc/conf`, a checkout keeps them at the top level.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # bertc/, this module lives in bertc/driver/


def conf_dir() -> str:
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    # An editable install maps `bertc.conf` onto conf/ through its import hook only.
    return str(importlib.resources.files("bertc.conf"))
