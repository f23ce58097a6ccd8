"""recsys: learn user and item embeddings from interaction logs, retrieve, serve, evaluate."""
from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger("recsys").addHandler(logging.NullHandler())

__all__ = ["__version__"]
