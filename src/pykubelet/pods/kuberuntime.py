"""Drive one pod toward its spec through CRI: sandbox, images, init and app containers, hooks, kills.

`sync` looks at what the runtime holds (from the PLEG) and takes the next steps;
it is idempotent and returns when there is nothing more to do right now, with
the number of seconds after which it wants to run again (a back-off ending),
or None. Container-level problems become waiting reasons in `facts` and Events,
never exceptions out of the worker.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from pathlib import Path

from cri import CRIClient, CRIError, NotFound, api

from nodeagent import logs

from . import dns, envvars, etchosts, logrotation, qos, resize, runtime_config
from .servicelinks import ServiceCache
from .backoff import Backoff
from .events import NORMAL, WARNING, Recorder
from .podcgroups import PodCgroups
from .podstate import CONTAINER_NAME, POD_UID, Container, PodRuntime
from .podstatus import Facts, not_started_reason
from .staticpods import is_static
from .. import handlers
from ..volumes import MountProblem, VolumeManager, pod_dir, subpaths

log = logs.get(__name__)

DEFAULT_GRACE = 30
MINIMUM_GRACE = 2  # seconds a container gets to stop however late its turn comes, as upstream
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
RESIZE_RETRY = 5.0  # seconds until a refused in-place resize is tried again
_PROPAGATION = {"None": api.PROPAGATION_PRIVATE, "HostToContainer": api.PROPAGATION_HOST_TO_CONTAINER,
                "Bidirectional": api.PROPAGATION_BIDIRECTIONAL}


class ContainerProblem(Exception):
    """A container cannot start now; `reason` is its waiting reason (ErrImagePull, CreateContainerError...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def pod_ref(pod: dict) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def pull_policy(container: dict) -> str:
    if container.get("imagePullPolicy"):
        return container["imagePullPolicy"]
    image = container.get("image", "")
    tag = image.rsplit("/", 1)[-1]
    return "Always" if "@" not in image and (":" not in tag or tag.endswith(":latest")) else "IfNotPresent"


def grace_period(pod: dict) -> int:
    meta, spec = pod["metadata"], pod["spec"]
    if meta.get("deletionGracePeriodSeconds") is not None:
        return int(meta["deletionGracePeriodSeconds"])
    return int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))


class RuntimeManager:
    def __init__(self, *, cri: CRIClient, volumes: VolumeManager, events: Recorder, config, node_name: str,
                 node_ip: str, node_allocatable: dict[str, str], node_memory: int, get_object, metrics=None,
                 services: ServiceCache | None = None):
        self.cri = cri
        self.metrics = metrics  # KubeletMetrics: pods and containers started, image pull time
        self.volumes = volumes
        self.events = events
        self.config = config
        self.node_name = node_name
        self.node_ip = node_ip
        self.node_allocatable = node_allocatable
        self.node_memory = node_memory
        self.get_object = get_object  # async (kind, namespace, name) -> dict | None, for env references
        self.services = services  # the watched Services behind the service link variables (None: no apiserver)
        self.crash_backoff = Backoff()
        self.image_backoff = Backoff()
        self._sandbox_configs: dict[tuple[str, int], api.PodSandboxConfig] = {}  # (pod uid, attempt) -> config

    # ------------------------------------------------------------------ images

    async def ensure_image(self, pod: dict, container: dict) -> tuple[str, str | None]:
        """The image to run, pulled if the policy says so; returns (image id, image's user)."""
        image = container.get("image", "")
        name = container["name"]
        if not image:
            raise ContainerProblem("InvalidImageName", 'Failed to apply default image tag "": couldn\'t parse '
                                                       'image name "": invalid reference format')
        spec = api.ImageSpec(image=image)
        present = (await self.cri.image_status(api.ImageStatusRequest(image=spec, verbose=False))).image
        policy = pull_policy(container)
        if present.id and policy != "Always":
            self.events.record(pod, NORMAL, "Pulled",
                               f'Container image "{image}" already present on machine', container=name)
            return present.id, present.username or (str(present.uid.value) if present.HasField("uid") else None)
        if policy == "Never":
            message = f'Container image "{image}" is not present with pull policy of Never'
            self.events.record(pod, WARNING, "ErrImageNeverPull", message, container=name)
            raise ContainerProblem("ErrImageNeverPull", message)
        key = (pod["metadata"]["uid"], image)
        if self.image_backoff.remaining(key):
            message = f'Back-off pulling image "{image}"'
            self.events.record(pod, NORMAL, "BackOff", message, container=name)
            raise ContainerProblem("ImagePullBackOff", message)
        self.events.record(pod, NORMAL, "Pulling", f'Pulling image "{image}"', container=name)
        started = time.monotonic()
        try:
            ref = (await self.cri.pull_image(api.PullImageRequest(image=spec))).image_ref
        except CRIError as err:
            self._pulled(pod, started)
            self.image_backoff.failed(key)
            message = f'Failed to pull image "{image}": {err.details}'
            self.events.record(pod, WARNING, "Failed", message, container=name)
            self.events.record(pod, WARNING, "Failed", "Error: ErrImagePull", container=name)
            raise ContainerProblem("ErrImagePull", message) from err
        self._pulled(pod, started)
        self.image_backoff.reset(key)
        self.events.record(pod, NORMAL, "Pulled", f'Successfully pulled image "{image}" in '
                           f"{time.monotonic() - started:.3f}s", container=name)
        pulled = (await self.cri.image_status(api.ImageStatusRequest(image=spec))).image
        return ref, pulled.username or (str(pulled.uid.value) if pulled.HasField("uid") else None)

    def _pulled(self, pod: dict, started: float) -> None:
        if self.metrics is not None:
            self.metrics.pod_startup.image_pulled(pod["metadata"]["uid"], time.monotonic() - started)

    @functools.cached_property
    def pod_cgroups(self) -> PodCgroups:
        return PodCgroups(self.config.cgroup_root, self.config.pod_pids_limit)

    # ------------------------------------------------------------------ sandbox

    def _sandbox_config(self, pod: dict, attempt: int, report: bool = False) -> api.PodSandboxConfig:
        """The sandbox config, built once per sandbox attempt (CreateContainer wants it on every call);
        `report` turns DNS warnings into Events, when the sandbox is made."""
        key = (pod["metadata"]["uid"], attempt)
        if key in self._sandbox_configs:
            return self._sandbox_configs[key]
        warnings: list[tuple[str, str]] = []
        try:
            cgroup_parent = qos.pod_cgroup_parent(self.config.cgroup_root, pod)
            dns_config = dns.dns_config(pod, cluster_dns=self.config.cluster_dns,
                                        cluster_domain=self.config.cluster_domain,
                                        host_resolv_conf=Path("/etc/resolv.conf"), node_ips=[self.node_ip],
                                        warnings=warnings)
            # No hostname for host-network pods: they share the node's UTS namespace, and runc refuses
            # to set a hostname there (the pod sees the node's own name, as upstream).
            config = runtime_config.sandbox_config(pod, attempt=attempt, cgroup_parent=cgroup_parent,
                                                   dns=dns_config, cluster_domain=self.config.cluster_domain)
        except envvars.ConfigProblem as problem:
            self.events.record(pod, WARNING, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {problem}")
            raise ContainerProblem(problem.reason, str(problem)) from problem
        if report:
            for reason, message in warnings:
                self.events.record(pod, WARNING, reason, message)
        self._sandbox_configs = {k: v for k, v in self._sandbox_configs.items() if k[0] != key[0]}
        self._sandbox_configs[key] = config
        return config

    async def create_sandbox(self, pod: dict, rt: PodRuntime) -> tuple[str, api.PodSandboxConfig]:
        """A new sandbox; kubelet_started_pods_total and _errors_total count the attempts, as upstream."""
        if self.metrics is not None:
            self.metrics.started_pods.inc()
        try:
            return await self._create_sandbox(pod, rt)
        except (ContainerProblem, CRIError):
            if self.metrics is not None:
                self.metrics.started_pods_errors.inc()
            raise

    async def _create_sandbox(self, pod: dict, rt: PodRuntime) -> tuple[str, api.PodSandboxConfig]:
        attempt = rt.sandbox.attempt + 1 if rt.sandbox else 0
        config = self._sandbox_config(pod, attempt, report=True)
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        for old in rt.sandboxes:
            await self.cri.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=old.id))
        try:
            self.pod_cgroups.prepare(config.linux.cgroup_parent)
        except OSError as err:
            message = f"Failed to create pod sandbox: the pod's cgroup {config.linux.cgroup_parent}: {err}"
            self.events.record(pod, WARNING, "FailedCreatePodSandBox", message)
            raise ContainerProblem("ContainerCreating", message) from err
        try:
            sandbox_id = (await self.cri.run_pod_sandbox(api.RunPodSandboxRequest(config=config))).pod_sandbox_id
        except CRIError as err:
            message = f"Failed to create pod sandbox: {err.details}"
            self.events.record(pod, WARNING, "FailedCreatePodSandBox", message)
            raise ContainerProblem("ContainerCreating", message) from err
        if attempt:
            self.events.record(pod, NORMAL, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.")
        return sandbox_id, config

    # ------------------------------------------------------------------ containers

    async def _env(self, pod: dict, container: dict, pod_ips: list[str]) -> list[tuple[str, str]]:
        async def get_configmap(namespace: str, name: str):
            return await self.get_object("configmaps", namespace, name)

        async def get_secret(namespace: str, name: str):
            return await self.get_object("secrets", namespace, name)

        return await envvars.container_env(
            pod, container, node_name=self.node_name, node_ip=self.node_ip, pod_ips=pod_ips,
            host_ips=[self.node_ip], get_configmap=get_configmap, get_secret=get_secret,
            service_env=self.service_env(pod), node_allocatable=self.node_allocatable)

    def service_env(self, pod: dict) -> dict[str, str]:
        """The service link variables the pod's containers get (servicelinks)."""
        if self.services is None:
            return {}
        # As upstream, a static pod does not wait for the services (the apiserver may be one of its kind): it
        # gets the links known so far, none before the first list.
        if not self.services.synced and not is_static(pod):
            raise envvars.config_problem("services have not yet been read at least once, cannot construct envvars")
        enable = (pod.get("spec") or {}).get("enableServiceLinks") is not False
        return self.services.env(pod["metadata"].get("namespace", ""), enable)

    def _mounts(self, pod: dict, container: dict, volumes: dict, message_file: Path,
                pod_ips: list[str], env: dict[str, str]) -> list[api.Mount]:
        mounts = []
        uid = pod["metadata"]["uid"]
        for index, vm in enumerate(container.get("volumeMounts", [])):
            prepared = volumes.get(vm["name"])
            if prepared is None:
                raise ContainerProblem("CreateContainerConfigError", f'cannot find volume "{vm["name"]}" to mount '
                                       f'into container "{container["name"]}"')
            sub = subpaths.subpath(vm, env)
            host = prepared.host_path
            if sub:
                target = pod_dir(self.config.root_dir, uid) / "volume-subpaths" / vm["name"] / container["name"] / \
                    str(index)
                host = subpaths.bind(prepared.host_path, sub, target, vm["name"], container["name"])
            mounts.append(api.Mount(container_path=vm["mountPath"], host_path=str(host),
                                    readonly=bool(vm.get("readOnly") or prepared.read_only),
                                    propagation=_PROPAGATION.get(vm.get("mountPropagation") or "None",
                                                                 api.PROPAGATION_PRIVATE)))
        path = container.get("terminationMessagePath", "/dev/termination-log")
        if path:
            mounts.append(api.Mount(container_path=path, host_path=str(message_file)))
        if etchosts.wanted(pod, container, pod_ips):
            hostname, domain = runtime_config.pod_hostname(pod, self.config.cluster_domain)
            hosts = etchosts.write(pod_dir(self.config.root_dir, pod["metadata"]["uid"]), pod, pod_ips, hostname,
                                   domain)
            mounts.append(api.Mount(container_path=etchosts.ETC_HOSTS, host_path=str(hosts)))
        return mounts

    def _message_file(self, pod: dict, container: dict, attempt: int) -> Path:
        path = pod_dir(self.config.root_dir, pod["metadata"]["uid"]) / "containers" / container["name"] / str(attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        path.chmod(0o666)  # writable by whatever user the container runs as
        return path

    async def start_container(self, pod: dict, container: dict, sandbox_id: str, sandbox_config, pod_ips: list[str],
                              attempt: int, volumes: dict) -> str:
        """Pull, create and start one container, then run its postStart hook; events as upstream."""
        name = container["name"]
        image_ref, image_user = await self.ensure_image(pod, container)
        try:
            env = await self._env(pod, container, pod_ips)
            mounts = self._mounts(pod, container, volumes, self._message_file(pod, container, attempt), pod_ips,
                                  dict(env))
            config = runtime_config.container_config(pod, container, attempt=attempt, env=env, mounts=mounts,
                                                     image=image_ref, image_user=image_user,
                                                     node_memory_capacity=self.node_memory)
            target = container.get("targetContainerName")
            if target:  # an ephemeral container that shares the process namespace of the one it debugs
                config.linux.security_context.namespace_options.pid = api.TARGET
                config.linux.security_context.namespace_options.target_id = await self._running_id(pod, target)
        except envvars.ConfigProblem as err:
            self.events.record(pod, WARNING, "Failed", f"Error: {err}", container=name)
            raise ContainerProblem(err.reason, str(err)) from err
        try:
            container_id = (await self.cri.create_container(api.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config))).container_id
        except CRIError as err:
            self.events.record(pod, WARNING, "Failed", f"Error: {err.details}", container=name)
            raise ContainerProblem("CreateContainerError", err.details) from err
        self.events.record(pod, NORMAL, "Created", f"Created container {name}", container=name)
        try:
            await self.cri.start_container(api.StartContainerRequest(container_id=container_id))
        except CRIError as err:
            self.events.record(pod, WARNING, "Failed", f"Error: {err.details}", container=name)
            raise ContainerProblem("RunContainerError", err.details) from err
        self.events.record(pod, NORMAL, "Started", f"Started container {name}", container=name)
        hook = (container.get("lifecycle") or {}).get("postStart")
        if hook:
            error = await self.run_hook(pod, container, container_id, hook, pod_ips, timeout=grace_period(pod))
            if error:
                message = f"PostStartHook failed: {error}"
                self.events.record(pod, WARNING, "FailedPostStartHook", message, container=name)
                await self.kill_container(pod, container, container_id, "FailedPostStartHook", grace=0)
                raise ContainerProblem("PostStartHookError", message)
        return container_id

    async def _running_id(self, pod: dict, name: str) -> str:
        """The id of the pod's running container `name`, for an ephemeral container's targetContainerName."""
        response = await self.cri.list_containers(api.ListContainersRequest(filter=api.ContainerFilter(
            label_selector={POD_UID: pod["metadata"]["uid"], CONTAINER_NAME: name},
            state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))))
        if not response.containers:
            raise envvars.config_problem(f"target container {name!r} of the ephemeral container is not running")
        return response.containers[0].id

    async def run_hook(self, pod: dict, container: dict, container_id: str, hook: dict, pod_ips: list[str],
                       timeout: float) -> str | None:
        """Run an exec, httpGet or sleep hook; returns an error message or None."""
        if "sleep" in hook:
            await asyncio.sleep(min(float(hook["sleep"].get("seconds", 0)), timeout))
            return None
        if "exec" in hook:
            try:
                result = await self.cri.exec_sync(api.ExecSyncRequest(
                    container_id=container_id, cmd=hook["exec"].get("command", []), timeout=int(max(timeout, 1))))
            except CRIError as err:
                return err.details
            if result.exit_code != 0:
                output = (result.stdout + result.stderr).decode(errors="replace").strip()
                return f"command {hook['exec'].get('command')!r} exited with {result.exit_code}: {output}"
            return None
        if "httpGet" in hook:
            outcome = await handlers.run_probe({"httpGet": hook["httpGet"], "timeoutSeconds": max(int(timeout), 1)},
                                             container=container, pod_ip=pod_ips[0] if pod_ips else self.node_ip,
                                             exec_fn=None)
            return None if outcome.result == handlers.Result.SUCCESS else outcome.message
        return f"unsupported lifecycle hook {sorted(hook)}"

    async def kill_container(self, pod: dict, container: dict | None, container_id: str, reason: str,
                             grace: int | None = None, pod_ips: list[str] | None = None) -> None:
        """preStop hook (within the grace period; an httpGet one goes to `pod_ips`), then StopContainer with
        what is left of it."""
        grace = grace_period(pod) if grace is None else grace
        name = container["name"] if container else "?"
        self.events.record(pod, NORMAL, "Killing", f"Stopping container {name}" if reason == "Stopping" else reason,
                           container=name if container else None)
        started = time.monotonic()
        hook = ((container or {}).get("lifecycle") or {}).get("preStop")
        if hook and grace > 0:
            try:
                error = await asyncio.wait_for(
                    self.run_hook(pod, container, container_id, hook, pod_ips or [], grace), grace)
            except asyncio.TimeoutError:
                error = f"PreStopHook did not finish within {grace}s"
            if error:
                self.events.record(pod, WARNING, "FailedPreStopHook", f"PreStopHook failed: {error}", container=name)
        remaining = max(int(grace - (time.monotonic() - started)), MINIMUM_GRACE if grace else 0)
        try:
            await self.cri.stop_container(api.StopContainerRequest(container_id=container_id, timeout=remaining))
        except CRIError as err:
            log.warning("Stopping container failed", pod=pod_ref(pod), container=name, err=err)

    async def termination_message(self, pod: dict, container: dict, record: Container) -> str:
        path = pod_dir(self.config.root_dir, pod["metadata"]["uid"]) / "containers" / container["name"] / str(
            record.attempt)
        try:
            message = path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            message = ""
        if not message and record.exit_code != 0 and \
                container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self._log_tail(pod, container, record)
        return message

    def _log_tail(self, pod: dict, container: dict, record: Container) -> str:
        from cri.logs import read_log

        meta = pod["metadata"]
        path = Path("/var/log/pods") / f"{meta['namespace']}_{meta['name']}_{meta['uid']}" / container["name"] / \
            f"{record.attempt}.log"
        try:
            entries = read_log(path, tail=FALLBACK_LOG_LINES)
        except OSError:
            return ""
        text = "\n".join(e.content.decode(errors="replace") for e in entries)
        return text[-FALLBACK_LOG_BYTES:]

    # ------------------------------------------------------------------ sync

    def _should_restart(self, pod: dict, record: Container) -> bool:
        policy = pod["spec"].get("restartPolicy", "Always")
        return policy == "Always" or (policy == "OnFailure" and record.exit_code != 0)

    async def _start(self, pod, container, rt, sandbox_id, sandbox_config, pod_ips, volumes, facts: Facts,
                     previous: Container | None, container_type: str = "container",
                     newest: Container | None = None) -> float | None:
        """Start (or restart) one container unless its back-off says wait; returns seconds to wait, if any.

        `previous` is the container's last run in this sandbox (its back-off); `newest` its last run in any
        sandbox, whose attempt the new one follows: CRI names carry the attempt, so a container whose sandbox
        was recreated (after a reboot, say) must not reuse the attempt of one left in the old sandbox.

        `container_type` (container, init_container) labels kubelet_started_containers_total and its errors,
        which count the attempts that got past the crash back-off, as upstream.
        """
        name = container["name"]
        key = (pod["metadata"]["uid"], name)
        if previous is not None:
            wait = self.crash_backoff.remaining(key, since=previous.finished_at / 1e9 or None)
            if wait:
                message = f"back-off {self.crash_backoff.delay(key):.0f}s restarting failed container=" \
                          f"{name} pod={pod['metadata']['name']}_{pod['metadata']['namespace']}" \
                          f"({pod['metadata']['uid']})"
                if facts.waiting.get(name, ("",))[0] != "CrashLoopBackOff":
                    self.events.record(pod, WARNING, "BackOff", f"Back-off restarting failed container {name} in "
                                       f"pod {pod['metadata']['name']}_{pod['metadata']['namespace']}"
                                       f"({pod['metadata']['uid']})", container=name)
                facts.waiting[name] = ("CrashLoopBackOff", message)
                return wait
            self.crash_backoff.failed(key, at=previous.finished_at / 1e9 if previous.finished_at else None)
        runs = [c.attempt for c in (previous, newest) if c is not None]
        attempt = max(runs) + 1 if runs else 0
        if self.metrics is not None:
            self.metrics.started_containers.labels(container_type).inc()
        try:
            container_id = await self.start_container(pod, container, sandbox_id, sandbox_config, pod_ips, attempt,
                                                      volumes)
        except ContainerProblem as problem:
            if self.metrics is not None:
                self.metrics.started_containers_errors.labels(container_type, problem.reason).inc()
            facts.waiting[name] = (problem.reason, problem.message)
            if problem.reason in ("ErrImagePull", "ImagePullBackOff"):
                return self.image_backoff.remaining((pod["metadata"]["uid"], container.get("image", ""))) or 1
            return 10.0
        facts.waiting.pop(name, None)
        facts.resize.gave(container_id, facts.resize.allocated.get(name, {}))
        return None

    async def sync(self, pod: dict, rt: PodRuntime, facts: Facts, unhealthy: set[str]) -> float | None:
        """One step toward the spec; `unhealthy` names containers whose liveness or startup probe failed."""
        pod = facts.resize.pod(pod)  # containers are created and updated with what they are allocated
        facts.resize.forget_except({c.id for c in rt.containers})  # rt is newer than any container we started
        spec = pod["spec"]
        try:
            volumes = await self.volumes.setup(pod)
        except MountProblem as problem:
            for name, message in problem.failures:
                self.events.record(pod, WARNING, "FailedMount",
                                   f'MountVolume.SetUp failed for volume "{name}" : {message}')
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                facts.waiting.setdefault(container["name"], (not_started_reason(spec), ""))
            return 10.0

        sandbox = rt.sandbox
        sandbox_config = None
        if sandbox is None or sandbox.state != api.SANDBOX_READY:
            if sandbox is not None and self._finished(pod, rt):
                return None  # a completed pod is not brought back
            for record in rt.running:
                await self.kill_container(pod, None, record.id, "Stopping", grace=grace_period(pod))
            try:
                sandbox_id, sandbox_config = await self.create_sandbox(pod, rt)
            except ContainerProblem as problem:
                for container in spec.get("initContainers", []) + spec.get("containers", []):
                    facts.waiting[container["name"]] = (problem.reason, problem.message)
                return 10.0
            return 0.0  # let the PLEG see the new sandbox (and its IP) before starting containers
        try:
            sandbox_config = self._sandbox_config(pod, sandbox.attempt)
        except ContainerProblem as problem:
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                facts.waiting[container["name"]] = (problem.reason, problem.message)
            return 10.0
        pod_ips = [self.node_ip] if spec.get("hostNetwork") else sandbox.ips
        current = [c for c in rt.containers if c.sandbox_id == sandbox.id]
        in_sandbox = PodRuntime(sandboxes=[sandbox], containers=current)
        waits: list[float] = []

        # Init containers, one at a time; restartable ones (sidecars) keep running.
        for container in spec.get("initContainers", []):
            name = container["name"]
            latest = in_sandbox.latest(name)
            sidecar = container.get("restartPolicy") == "Always"
            if latest is not None and latest.state == api.CONTAINER_RUNNING:
                if sidecar:
                    await self._resize(pod, container, latest, facts, pod_ips, in_place_only=True)
                    continue
                return None  # wait for it to finish
            if latest is not None and latest.state == api.CONTAINER_EXITED:
                if not sidecar and latest.exit_code == 0:
                    continue
                if not sidecar and spec.get("restartPolicy", "Always") == "Never":
                    return None  # the pod has failed
            wait = await self._start(pod, container, in_sandbox, sandbox.id, sandbox_config, pod_ips, volumes,
                                     facts, latest, "init_container", newest=rt.latest(name))
            if sidecar and wait is None:
                continue
            return wait

        # App containers.
        for container in spec.get("containers", []):
            name = container["name"]
            latest = in_sandbox.latest(name)
            if latest is not None and latest.state == api.CONTAINER_RUNNING:
                changed = latest.spec_hash and latest.spec_hash != runtime_config.container_hash(container)
                if name in unhealthy or changed:
                    why = (f"Container {name} definition changed, will be restarted" if changed else
                           f"Container {name} failed liveness probe, will be restarted")
                    await self.kill_container(pod, container, latest.id, why, pod_ips=pod_ips)
                    unhealthy.discard(name)
                    waits.append(0.0)
                elif (wait := await self._resize(pod, container, latest, facts, pod_ips)) is not None:
                    waits.append(wait)
                continue
            if latest is not None and latest.state == api.CONTAINER_CREATED:
                continue
            resized = latest is not None and latest.id in facts.resize.restarting
            if latest is not None and latest.state == api.CONTAINER_EXITED and not resized:
                facts.messages.setdefault(latest.id, await self.termination_message(pod, container, latest))
                if not self._should_restart(pod, latest):
                    facts.waiting.pop(name, None)
                    continue
            # Stopped for a resize: started again at once, whatever the restart policy, with no back-off.
            wait = await self._start(pod, container, in_sandbox, sandbox.id, sandbox_config, pod_ips, volumes,
                                     facts, None if resized else latest, newest=rt.latest(name))
            if wait is not None:
                waits.append(wait)

        # Ephemeral containers (kubectl debug): each runs once in the running pod, never restarted.
        for container in spec.get("ephemeralContainers", []):
            if in_sandbox.latest(container["name"]) is None:
                wait = await self._start(pod, container, in_sandbox, sandbox.id, sandbox_config, pod_ips, volumes,
                                         facts, None, "ephemeral_container", newest=rt.latest(container["name"]))
                if wait is not None:
                    waits.append(wait)
        await self._prune(rt)
        token_refresh = self.volumes.next_refresh(pod["metadata"]["uid"])
        if token_refresh is not None:
            waits.append(token_refresh)
        return min(waits) if waits else None

    async def _resize(self, pod: dict, container: dict, record: Container, facts: Facts, pod_ips: list[str],
                      in_place_only: bool = False) -> float | None:
        """Give a running container its allocated resources if it was given others; None when it has them.

        In place through UpdateContainerResources, or, when a changed resource's `resizePolicy` says
        RestartContainer, by stopping it to be started again with them (0.0: sync again). A refusal is retried
        in RESIZE_RETRY seconds, its message in PodResizeInProgress."""
        allocation, name = facts.resize, container["name"]
        want = allocation.allocated.get(name, {})
        given = allocation.given(name, record.id)
        if given == want:
            return None
        policies = {p.get("resourceName"): p.get("restartPolicy") for p in container.get("resizePolicy") or []}
        if not in_place_only and any(policies.get(r) == "RestartContainer" for r in resize.changed(given, want)):
            allocation.restarting.add(record.id)
            await self.kill_container(pod, container, record.id, f"Container {name} resize requires restart",
                                      pod_ips=pod_ips)
            return 0.0
        resources = runtime_config.container_resources(pod, container, node_memory_capacity=self.node_memory)
        try:
            await self.cri.update_container_resources(api.UpdateContainerResourcesRequest(
                container_id=record.id, linux=resources))
        except CRIError as err:
            allocation.error = f"Error updating container {name} resources: {err.details}"
            log.warning("Container resize failed", pod=pod_ref(pod), container=name, err=err.details)
            return RESIZE_RETRY
        allocation.gave(record.id, want)
        allocation.error = None
        log.info("Container resized", pod=pod_ref(pod), container=name, resources=want)
        return None

    def _finished(self, pod: dict, rt: PodRuntime) -> bool:
        """restartPolicy says nothing will run again: every app container exited for good."""
        spec = pod["spec"]
        for container in spec.get("containers", []):
            latest = rt.latest(container["name"])
            if latest is None or latest.state != api.CONTAINER_EXITED or self._should_restart(pod, latest):
                return False
        return True

    async def _prune(self, rt: PodRuntime) -> None:
        """A live pod's garbage, as upstream's container GC takes it: of each container name the newest two are
        kept (the newest, and the one before for lastState), older exited ones removed, in whatever sandbox;
        then every sandbox but the newest that is not ready and holds no container any more (a pod whose
        sandbox was recreated, after a reboot say, would otherwise keep each old one for as long as it runs)."""
        seen: dict[str, int] = {}
        kept: set[str] = set()
        for record in rt.containers:
            seen[record.name] = seen.get(record.name, 0) + 1
            if seen[record.name] <= 2 or record.state != api.CONTAINER_EXITED:
                kept.add(record.sandbox_id)
                continue
            try:
                await self.cri.remove_container(api.RemoveContainerRequest(container_id=record.id))
            except CRIError as err:
                log.warning("Removing old container failed", container=record.id, err=err)
                kept.add(record.sandbox_id)
                continue
            path = logrotation.log_path(record)
            if path is not None:
                logrotation.clean(path)  # its log and rotated files go with it, as upstream's
        for sandbox in rt.sandboxes[1:]:
            if sandbox.state == api.SANDBOX_READY or sandbox.id in kept or not sandbox.ours:
                continue
            try:
                await self.cri.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id))
            except NotFound:
                pass
            except CRIError as err:
                log.warning("Removing an old sandbox failed", sandbox=sandbox.id, err=err)

    async def kill_pod(self, pod: dict, rt: PodRuntime, grace: int | None = None) -> None:
        """Stop every running container, then the sandboxes. As upstream: the regular containers first, in
        parallel, each with its preStop hook; then the sidecars (restartable init containers) one at a time in
        reverse order, with what is left of the grace period, so that they serve the others' preStop hooks."""
        spec = pod["spec"]
        specs = {c["name"]: c for key in ("initContainers", "containers", "ephemeralContainers")
                 for c in spec.get(key, [])}
        sidecars = [c["name"] for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        sandbox = rt.sandbox
        pod_ips = [self.node_ip] if spec.get("hostNetwork") else (sandbox.ips if sandbox else [])
        grace = grace_period(pod) if grace is None else grace
        started = time.monotonic()
        await asyncio.gather(*(self.kill_container(pod, specs.get(r.name), r.id, "Stopping", grace=grace,
                                                   pod_ips=pod_ips)
                               for r in rt.running if r.name not in sidecars))
        for name in reversed(sidecars):
            for record in [r for r in rt.running if r.name == name]:
                left = max(int(grace - (time.monotonic() - started)), MINIMUM_GRACE if grace else 0)
                await self.kill_container(pod, specs[name], record.id, "Stopping", grace=left, pod_ips=pod_ips)
        for sandbox in rt.sandboxes:
            if sandbox.state == api.SANDBOX_READY:
                try:
                    await self.cri.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox.id))
                except CRIError as err:
                    log.warning("Stopping sandbox failed", pod=pod_ref(pod), err=err)

    async def remove_containers(self, rt: PodRuntime) -> None:
        """Remove the pod's (stopped) containers: their writable layers and logs go."""
        for record in rt.containers:
            try:
                await self.cri.remove_container(api.RemoveContainerRequest(container_id=record.id))
            except CRIError as err:
                log.warning("Removing container failed", container=record.id, err=err)

    async def remove_sandboxes(self, rt: PodRuntime) -> None:
        for sandbox in rt.sandboxes:
            try:
                await self.cri.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox.id))
                await self.cri.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id))
            except NotFound:
                pass  # already gone: that is what we wanted
            except CRIError as err:
                log.warning("Removing sandbox failed", sandbox=sandbox.id, err=err)

    async def remove_pod(self, uid: str, rt: PodRuntime) -> None:
        await self.remove_containers(rt)
        await self.remove_sandboxes(rt)
        self.volumes.tear_down(uid)
        self.pod_cgroups.remove(uid)
        for directory in logrotation.LOG_ROOT.glob(f"*_*_{uid}"):  # <namespace>_<name>_<uid>; names hold no "_"
            shutil.rmtree(directory, ignore_errors=True)
        self._sandbox_configs = {k: v for k, v in self._sandbox_configs.items() if k[0] != uid}
        self.crash_backoff.forget_prefix(uid)
        self.image_backoff.forget_prefix(uid)
