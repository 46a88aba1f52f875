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


RESOURCES = Path(__file__).parent / "resources"


def shipped_config(name: str) -> Path | None:
    """The run config shipped as ``resources/configs/NAME.toml`` (e.g. ``paper_gpu``), or None."""
    path = RESOURCES / "configs" / f"{name}.toml"
    return path if path.is_file() else None


def accelerate_config(name: str) -> Path:
    """An accelerate config: a shipped one by name (``ddp``, ``zero2``, ``zero3``) or a YAML path."""
    shipped = RESOURCES / "accelerate" / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    path = Path(name).expanduser()
    if not path.is_file():
        names = sorted(p.stem for p in (RESOURCES / "accelerate").glob("*.yaml"))
        raise FileNotFoundError(f"dpo.launcher = {name!r} is neither a shipped accelerate config "
                                f"({', '.join(names)}) nor a YAML file; write one with "
                                "`accelerate config --config_file FILE` or pick a shipped one")
    return path
