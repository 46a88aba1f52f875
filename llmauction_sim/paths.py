"""Where derived artefacts (converted models, embedding caches) live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LLMAUCTION_CACHE``, else ``~/.cache/llmauction_sim``; created on first use."""
    root = os.environ.get("LLMAUCTION_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "llmauction_sim"
    path.mkdir(parents=True, exist_ok=True)
    return path
