"""What both agents' Prometheus metrics share: client_golang's exposition habits on top of prometheus_client.

- No ``*_created`` series (client_golang writes none).
- `UsedFamilies`: families sorted by name, labelled ones that were never used left out.
- `exposition`: the text format, with the few upstream counters whose names lack ``_total``
  (``kubelet_pleg_discard_events``, say) written under their own names. prometheus_client
  always appends ``_total`` to a counter; client_golang writes the name it was given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

disable_created_metrics()

_BARE_COUNTERS: set[str] = set()  # upstream counter names without the _total suffix
_pattern: re.Pattern | None = None


class UsedFamilies(Collector):
    """The metrics' families as client_golang writes them: sorted by name, labelled ones never used left out."""

    def __init__(self, metrics: Iterable[MetricWrapperBase]):
        self.metrics = list(metrics)

    def collect(self):
        families = [f for m in self.metrics for f in m.collect() if f.samples]
        return sorted(families, key=lambda f: f.name + ("_total" if f.type == "counter" else ""))


def bare_counter(name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
    """A Counter exposed as `name` itself, as client_golang writes a counter named without ``_total``."""
    global _pattern
    _BARE_COUNTERS.add(name)
    _pattern = re.compile(r"^(# (?:HELP|TYPE) )?(" + "|".join(map(re.escape, sorted(_BARE_COUNTERS))) +
                          r")_total(?=[ {])", re.MULTILINE)
    return Counter(name, documentation, labelnames, registry=None)


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format 0.0.4 of `registry`, bare counters under their upstream names."""
    text = generate_latest(registry)
    if _pattern is None:
        return text
    return _pattern.sub(r"\1\2", text.decode()).encode()
