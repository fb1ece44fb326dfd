"""downwardAPI volumes (and the downwardAPI source of projected volumes): the pod's own fields as files.

Each item is a `fieldRef` (metadata.name, namespace, uid, labels, annotations, or one label or annotation by
key; labels and annotations as `key="value"` lines, sorted, values quoted as Go's %q) or a
`resourceFieldRef` (a container's limits or requests in units of `divisor`, a missing limit read as the
node's allocatable). The pod's labels and annotations can change while it runs: each sync rewrites the files.
"""

from __future__ import annotations

import os

from ..pods import envvars
from .atomicwriter import FileProjection

DEFAULT_MODE = 0o644


def payload(pod: dict, source: dict, default_mode: int | None, node_allocatable: dict[str, str],
            node_name: str = "") -> dict[str, FileProjection]:
    """The files of one downwardAPI source; ValueError naming every item that cannot be read."""
    default = DEFAULT_MODE if default_mode is None else int(default_mode)
    files: dict[str, FileProjection] = {}
    errors: list[str] = []
    for item in source.get("items") or []:
        mode = default if item.get("mode") is None else int(item["mode"])
        try:
            if item.get("fieldRef"):
                value = envvars.field_value(pod, item["fieldRef"], node_name=node_name, node_ip="", pod_ips=[],
                                            host_ips=[])
            elif item.get("resourceFieldRef"):
                ref = item["resourceFieldRef"]
                value = envvars.resource_value(pod, {}, ref, node_allocatable)
            else:
                value = ""
        except envvars.ConfigProblem as problem:
            errors.append(problem.message)
            continue
        files[os.path.normpath(item.get("path", ""))] = FileProjection(value.encode(), mode)
    if errors:
        raise ValueError(errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")
    return files
