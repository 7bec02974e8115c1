"""``--set KEY=VALUE`` overrides of nested settings dicts (shared by the layer-wise models)."""

from __future__ import annotations

import json
from typing import Sequence

__all__ = ["override_settings", "preset_config"]


def override_settings(d: dict, overrides: Sequence[str] | None, what: str = "model") -> dict:
    """Return a copy of ``d`` with ``a.b=VALUE`` items applied (VALUE parsed as JSON, else text).

    Unknown keys raise ``ValueError`` naming the known ones.
    """
    d = json.loads(json.dumps(d))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        try:
            v = json.loads(val)
        except ValueError:
            v = val
        parts = key.strip().split(".")
        tgt = d
        for p in parts[:-1]:
            if not isinstance(tgt.get(p), dict):
                raise ValueError(f"unknown {what} setting {key!r}")
            tgt = tgt[p]
        if parts[-1] not in tgt:
            raise ValueError(f"unknown {what} setting {key!r}; known: {', '.join(sorted(tgt))}")
        tgt[parts[-1]] = v
    return d


def preset_config(presets: dict, name: str, geometry):
    """The config a model's named preset (``quick``, ``full``) builds for ``geometry``."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(presets)}")
    return presets[name](geometry)
