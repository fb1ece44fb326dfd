"""configMap and secret volumes (and the configMap/secret sources of projected volumes): object -> files.

As upstream's MakePayload: without `items` every key becomes a file named after it; with `items` only the
listed keys, at their paths, a missing key refused unless the source is optional. A file's mode is its
item's `mode`, else the volume's `defaultMode` (0644). A missing object gives an empty volume when optional.
"""

from __future__ import annotations

import base64

from .atomicwriter import FileProjection

DEFAULT_MODE = 0o644


def object_data(kind: str, obj: dict | None) -> dict[str, bytes]:
    """Every key of a ConfigMap (`data` and `binaryData`) or Secret, as bytes."""
    if obj is None:
        return {}
    if kind == "secret":
        return {k: base64.b64decode(v or "") for k, v in (obj.get("data") or {}).items()}
    data = {k: (v or "").encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v or "") for k, v in (obj.get("binaryData") or {}).items()})
    return data


def payload(kind: str, source: dict, obj: dict | None, default_mode: int | None) -> dict[str, FileProjection]:
    """The files of one configMap/secret source; ValueError (upstream's text) for a missing key."""
    default = DEFAULT_MODE if default_mode is None else int(default_mode)
    data = object_data(kind, obj)
    items = source.get("items") or []
    if not items:
        return {key: FileProjection(value, default) for key, value in data.items()}
    files = {}
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if source.get("optional"):
                continue
            raise ValueError(f"configmap references non-existent config key: {key}" if kind == "configmap"
                             else f"references non-existent secret key: {key}")
        mode = item.get("mode")
        files[item.get("path", key)] = FileProjection(data[key], default if mode is None else int(mode))
    return files


def not_found(kind: str, name: str) -> str:
    """The API's NotFound text, which upstream's mount error carries."""
    return f'{"configmaps" if kind == "configmap" else "secrets"} "{name}" not found'
