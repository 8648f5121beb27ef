"""Suite-wide setup: make the shared helpers importable from every test folder."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for folder in (_HERE, _HERE / "helpers"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
