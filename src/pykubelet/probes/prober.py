"""The probe worker: one liveness, readiness or startup probe of one container, run on its schedule.

Behaviour follows upstream `pkg/kubelet/prober`: initialDelaySeconds, periodSeconds and the success/failure
thresholds; each change of the cached result is reported through `on_result`. UNKNOWN outcomes (the probe
could not run) are retried and never counted, as upstream. The actions themselves are in ../handlers.py.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable

from nodeagent import logs

from ..handlers import MAX_RETRIES, ExecFn, ProbeOutcome, Result, run_probe

log = logs.get(__name__)


_INITIAL = {"readiness": Result.FAILURE, "liveness": Result.SUCCESS, "startup": Result.UNKNOWN}


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until `event` is set or `timeout` seconds have passed."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass


class ProbeWorker:
    """Runs one probe (liveness, readiness or startup) of one container on its schedule.

    `result` is the cached result: readiness starts FAILURE, liveness SUCCESS and startup
    UNKNOWN, as upstream. It changes only after successThreshold successes or
    failureThreshold failures in a row (UNKNOWN outcomes, where the probe could not run,
    are logged and not counted); each change is reported by `on_result(kind, result,
    outcome)`, which may be a plain function or a coroutine function.

    Startup gating: a liveness or readiness worker of a container that has a startup probe
    takes `started`, an asyncio.Event the caller sets when that container's startup worker
    reports SUCCESS (and clears when the container restarts). Until it is set the worker
    does not probe and its result stays at the initial value. The startup worker itself
    ignores `started`.

    After a liveness FAILURE, or any startup result, the worker holds (stops probing) until
    `reset()` is called for the new container instance, as upstream does per container ID.

    Probe fields may be floats (tests use periods of a few hundredths of a second). `clock`
    is the clock of the `started_at` times given to `run` and `reset` (e.g. time.time for
    a CRI startedAt), used for initialDelaySeconds and `kubelet_started`.

    `kubelet_started` (on `clock`): a worker that starts within one period of it first waits a
    random part of a period, as upstream's does, so that a restarted kubelet does not run every
    pod's probes at once (a burst in which exec probes time out and ready pods flap).
    """

    def __init__(self, kind: str, probe: dict, *, container: dict, pod_ip: Callable[[], str], exec_fn: ExecFn,
                 on_result: Callable[[str, Result, ProbeOutcome], Awaitable[None] | None],
                 started: asyncio.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 on_outcome: Callable[[str, ProbeOutcome], None] | None = None,
                 on_probed: Callable[[str, ProbeOutcome, float], None] | None = None,
                 kubelet_started: float | None = None):
        if kind not in _INITIAL:
            raise ValueError(f"unknown probe kind {kind!r}")
        self.kind, self.probe, self.container = kind, probe, container
        self._pod_ip, self._exec_fn, self._on_result, self._clock = pod_ip, exec_fn, on_result, clock
        self._on_outcome = on_outcome  # every finished probe (for Unhealthy events), not just result changes
        self._on_probed = on_probed  # every probe run, UNKNOWN too, with its seconds (for the prober metrics)
        self._started = started if kind != "startup" else None
        self._kubelet_started = kubelet_started
        self.initial_delay = float(probe.get("initialDelaySeconds") or 0)
        self.period = float(probe.get("periodSeconds") or 10)
        self.success_threshold = float(probe.get("successThreshold") or 1)
        self.failure_threshold = float(probe.get("failureThreshold") or 3)
        if kind != "readiness" and self.success_threshold != 1:
            raise ValueError(f"successThreshold of a {kind} probe must be 1")
        self._wake = asyncio.Event()
        self._generation = 0
        self._started_at = clock()
        self.last_outcome: ProbeOutcome | None = None
        self.reset(None)

    def reset(self, started_at: float | None = None) -> None:
        """Start over for a new container instance started at `started_at` (default: now).

        The result goes back to its initial value without a call to `on_result`; a probe
        in flight for the old instance is discarded.
        """
        self.result = _INITIAL[self.kind]
        self._last: Result | None = None
        self._run = 0
        self._hold = False
        self._started_at = self._clock() if started_at is None else started_at
        self._generation += 1
        self._wake.set()

    async def run(self, started_at: float) -> None:
        """Probe the container started at `started_at` until cancelled."""
        self._started_at = started_at
        loop = asyncio.get_running_loop()
        if self._kubelet_started is not None and self._clock() - self._kubelet_started < self.period:
            await asyncio.sleep(random.random() * self.period)
        while True:
            self._wake.clear()
            if self._hold:
                await self._wake.wait()
                continue
            delay = self._started_at + self.initial_delay - self._clock()
            if delay > 0:
                await _wait(self._wake, delay)
                continue
            if self._started is not None and not self._started.is_set():
                await _wait(self._started, self.period)
                continue
            began, generation = loop.time(), self._generation
            outcome = await self._probe_once()
            if generation == self._generation:
                if self._on_probed is not None:
                    self._on_probed(self.kind, outcome, loop.time() - began)
                await self._record(outcome)
            await _wait(self._wake, self.period - (loop.time() - began))

    async def _probe_once(self) -> ProbeOutcome:
        outcome = ProbeOutcome(Result.UNKNOWN, "not run")
        for _ in range(MAX_RETRIES):
            try:
                outcome = await run_probe(self.probe, container=self.container, pod_ip=self._pod_ip(),
                                          exec_fn=self._exec_fn)
            except Exception as err:  # a bug here must not end the worker (upstream eats panics too)
                log.error("Probe crashed", probe=self.kind, container=self.container.get("name"), err=repr(err))
                outcome = ProbeOutcome(Result.UNKNOWN, f"probe crashed: {err!r}")
            if outcome.result is not Result.UNKNOWN:
                break
        return outcome

    async def _record(self, outcome: ProbeOutcome) -> None:
        self.last_outcome = outcome
        name = self.container.get("name")
        result = outcome.result
        if result is Result.UNKNOWN:
            log.warning("Probe errored", probe=self.kind, container=name, output=outcome.message)
            return
        log.debug("Probe", probe=self.kind, container=name, result=result.value, output=outcome.message)
        if self._on_outcome is not None:
            self._on_outcome(self.kind, outcome)
        if outcome.warning:
            log.warning("Probe succeeded with a warning", probe=self.kind, container=name, output=outcome.message)
        self._run = self._run + 1 if result is self._last else 1
        self._last = result
        threshold = self.failure_threshold if result is Result.FAILURE else self.success_threshold
        if self._run < threshold:
            return
        changed = result is not self.result
        self.result = result
        if (self.kind == "liveness" and result is Result.FAILURE) or self.kind == "startup":
            self._hold, self._run = True, 0  # the container restarts (or has started): wait for reset()
        if changed:
            log.info("Probe result changed", probe=self.kind, container=name, result=result.value,
                     output=outcome.message)
            returned = self._on_result(self.kind, result, outcome)
            if inspect.isawaitable(returned):
                await returned
