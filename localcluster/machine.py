"""Test machines: a debootstrapped Debian 12 booted by systemd-nspawn with systemd as PID 1.

What `make node-test` installs pynode on, as an operator would on a bare host: the ansible playbook over
ssh, then `kubeadm join` of the local control plane. A machine lives in its own network namespace with a
veth into the cluster's bridge, like a local node, and has no route anywhere else:

    host: bridge pynode0 (10.221.0.1/24)
      |-- veth pynm<n>-host <-> eth0 in netns pynode-m<n> (10.221.0.<n>/24), systemd-nspawn's machine
    host route: the machine's pod subnet via the machine's address (added at boot, removed at destroy)

Which machine gets which address and pod subnet is PLAN's: apart from each other, from the local nodes (.11 up)
and from the Vagrant VMs (localcluster/vagrant.py: .60 to .69, pods in 10.222.241.0/24 to 10.222.247.0/24), so
that every kind of machine can run beside the others.

With no way to Debian's mirror from inside, the machine's apt reads a local repository of the packages
the roles install (downloaded once on the host, cached, bind-mounted read-only at /srv/pynode-debs).

Cached under $PYNODE_CACHE/machines: the base image (debootstrap, ~50 s once), the package repository
and an ssh key. A machine's own tree is a copy of the base image under /var/lib/pynode-machines/<name>,
kept across a poweroff and boot, removed by destroy().

systemd-nspawn runs it with --register=no --keep-unit (no systemd on the host), every capability (the
sandbox's CAP_SYS_RESOURCE is already gone, hence containerd's restrict_oom_score_adj), and the keyring
and bpf system calls runc uses; a unit baked into the image remounts the cgroup v1 controllers (read-only
as nspawn mounts them) writable at boot, so that containerd can drive cgroups. Of /proc/sys only net/ (the
machine's own namespace) is writable: the machine shares the host's kernel, and its systemd-sysctl must
not set the host's global keys (fs.protected_*, say).

A machine made for the upstream kubelet (`upstream_kubelet=True`) gets a unit that shows it, at every boot
before the kubelet starts, the host-wide sysctls its container manager insists on
(upstream_node.KERNEL_TUNABLES) with the values it wants, as regular files bind-mounted over /proc/sys/<key>
in the machine's mount namespace (the keys themselves are the host's, read-only here), and a /dev/kmsg for
its OOM watcher, which refuses to start without one (systemd-nspawn gives none; the unit links the console
there, as kind's node image does). pykubelet needs neither.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .procs import UpError, run_checked
from .settings import Cluster
from .upstream_node import KERNEL_TUNABLES

RELEASE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# A bare Debian with what ansible needs to reach it: systemd, ssh and Python.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "iproute2", "ca-certificates",
                 "procps", "kmod")
# What the roles install (ansible/roles/*/defaults), offered by the machine's local repository.
ROLE_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "ethtool", "socat",
                 "kmod", "python3", "python3-venv",
                 "ipset",  # for the upstream kube-proxy (pynode_agents=upstream)
                 "python3-packaging", "python3-apt")  # ansible's apt and pip modules need them
MACHINES_DIR = Path(os.environ.get("PYNODE_MACHINES", "/var/lib/pynode-machines"))
REPO = Path(__file__).resolve().parents[1]
# Each test machine's (index: its address 10.221.0.<index>, pod subnet), by what makes it.
PLAN = {
    "node-test": (50, "10.222.250.0/24"),
    "node-test-upstream": (51, "10.222.251.0/24"),
    "node-conformance": (56, "10.222.236.0/24"),
    "node-conformance-upstream": (57, "10.222.237.0/24"),
    "kubeadm-control-plane": (70, "10.222.230.0/24"),
    "kubeadm-worker": (71, "10.222.231.0/24"),
}

CGROUPS_UNIT = """\
[Unit]
Description=Make the cgroup v1 controllers writable (systemd-nspawn mounts them read-only)
DefaultDependencies=no
Before=sysinit.target containerd.service
ConditionPathIsReadWrite=!/sys/fs/cgroup/memory

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mount -o remount,rw /sys/fs/cgroup; for d in /sys/fs/cgroup/*; do mount -o remount,bind,rw "$d"; done'

[Install]
WantedBy=sysinit.target
"""
# Inside a machine made for the upstream kubelet: the files shown over /proc/sys, and the unit that mounts them.
SHIMS_DIR = "/var/lib/pynode-machine/sysctl"
SHIMS_UNIT_NAME = "pynode-upstream-kubelet-shims.service"


def upstream_kubelet_shims_unit() -> str:
    """The unit that prepares a machine for the upstream kubelet at every boot (see the module's docstring)."""
    mounts = "".join(f"ExecStart=/bin/mount --bind {SHIMS_DIR}/{key.replace('/', '.')} /proc/sys/{key}\n"
                     for key in KERNEL_TUNABLES)
    return ("[Unit]\n"
            "Description=Show the upstream kubelet the host-wide sysctls it wants, and a /dev/kmsg\n"
            "DefaultDependencies=no\nBefore=sysinit.target kubelet.service\n\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            f"{mounts}ExecStart=/bin/ln -sf /dev/console /dev/kmsg\n\n"
            "[Install]\nWantedBy=sysinit.target\n")


def log(msg: str) -> None:
    import sys

    print(f"[machine] {msg}", file=sys.stderr, flush=True)


def _run(*argv: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return run_checked(*argv, timeout=timeout, **kw)


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def cache_dir(cluster: Cluster) -> Path:
    return cluster.cache / "machines"


def base_image(cluster: Cluster) -> Path:
    """The debootstrapped Debian 12, built once into the cache."""
    path = cache_dir(cluster) / f"{RELEASE}-{_digest(BASE_PACKAGES, CGROUPS_UNIT)}"
    if (path / "etc/os-release").exists():
        return path
    for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container")):
        if not shutil.which(tool):
            raise UpError(f"machine: '{tool}' is missing (Debian package {package}; run `make deps`)")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {RELEASE} into {path} (once; about a minute)")
    _run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", RELEASE, str(tmp), MIRROR,
         timeout=1800)
    unit = tmp / "etc/systemd/system/pynode-cgroups-writable.service"
    unit.write_text(CGROUPS_UNIT)
    wants = tmp / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    # No apt timers or getty in a test machine; the local repository replaces the mirror.
    for name in ("apt-daily.timer", "apt-daily-upgrade.timer", "getty@tty1.service"):
        for link in (tmp / "etc/systemd/system").rglob(name):
            link.unlink()
    (tmp / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/srv/pynode-debs ./\n")
    (tmp / "etc/apt/apt.conf.d/99pynode-local").write_text('Acquire::Languages "none";\n')
    tmp.rename(path)
    return path


def package_repository(cluster: Cluster) -> Path:
    """A flat apt repository with ROLE_PACKAGES and their dependencies for the base image, built once."""
    image = base_image(cluster)
    repo = cache_dir(cluster) / f"debs-{_digest(image.name, ROLE_PACKAGES)}"
    if (repo / "Packages").exists():
        return repo
    tmp = repo.with_name(repo.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "partial").mkdir(parents=True)
    log(f"downloading {len(ROLE_PACKAGES)} packages and their dependencies into {repo} (once)")
    script = (f"echo 'deb {MIRROR} {RELEASE} main' > /etc/apt/sources.list && apt-get update -qq && "
              f"apt-get install -qq --download-only --no-install-recommends -o Dir::Cache::archives=/repo "
              f"{' '.join(ROLE_PACKAGES)}")
    # The base image read-only under a throwaway overlay, on the host's network, to reach the mirror.
    _run("systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--volatile=overlay", "--resolv-conf=copy-host",
         f"--directory={image}", f"--bind={tmp}:/repo", "/bin/sh", "-c", script, timeout=1800)
    shutil.rmtree(tmp / "partial", ignore_errors=True)
    (tmp / "lock").unlink(missing_ok=True)
    packages = _run("dpkg-scanpackages", "--multiversion", ".", cwd=tmp).stdout
    (tmp / "Packages").write_text(packages)
    tmp.rename(repo)
    return repo


def playbook(roles: list[str], name: str = "A test machine") -> str:
    """A playbook that applies the repository's ansible roles `roles`, in order, to the inventory's `nodes`."""
    return yaml.safe_dump([{"name": name, "hosts": "nodes", "become": True,
                            "roles": [{"role": role} for role in roles]}], sort_keys=False)


def apply_roles(roles: list[str], inventory: Path, out: Path, name: str) -> None:
    """Run `roles` against the hosts of `inventory`: the playbook goes to out/<name>.yml and ansible's output to
    out/<name>.log, which an UpError names if the run fails."""
    bin_dir = Path(sys.executable).parent
    (out / f"{name}.yml").write_text(playbook(roles))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
           "PYTHONWARNINGS": "ignore", "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_ROLES_PATH": str(REPO / "ansible" / "roles")}
    with open(out / f"{name}.log", "w") as output:
        proc = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inventory), str(out / f"{name}.yml")],
                              stdout=output, stderr=subprocess.STDOUT, env=env, timeout=1800)
    if proc.returncode != 0:
        raise UpError(f"machine: the playbook {name} ({', '.join(roles)}) failed; see {out / f'{name}.log'}")


def ssh_key(cluster: Cluster) -> Path:
    key = cache_dir(cluster) / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pynode node-test", "-f", str(key))
    return key


@dataclass
class Machine:
    """One test machine: `index` picks its address (10.221.0.<index>) and names."""

    cluster: Cluster
    index: int = PLAN["node-test"][0]
    pod_subnet: str = PLAN["node-test"][1]
    upstream_kubelet: bool = False  # add the shims the upstream kubelet needs (see the module's docstring)

    def __post_init__(self) -> None:
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"pynode-m{self.index}"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def host_veth(self) -> str:
        return f"pynm{self.index}-host"

    @property
    def ip(self) -> str:
        return str(self.cluster.node_network.network_address + self.index)

    @property
    def dir(self) -> Path:
        return MACHINES_DIR / self.name

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def console_log(self) -> Path:
        """Beside the machine's directory, so that it outlives destroy()."""
        return MACHINES_DIR / f"{self.name}.console.log"

    # -- lifecycle

    def create(self) -> None:
        """A fresh tree from the base image, its network namespace and the host's route to its pods."""
        if not ipaddress.ip_network(self.pod_subnet).subnet_of(self.cluster.pod_cidr):
            raise UpError(f"machine: {self.pod_subnet} is not inside the cluster's pod CIDR {self.cluster.pod_cidr}")
        image = base_image(self.cluster)
        package_repository(self.cluster)  # built now rather than at boot
        key = ssh_key(self.cluster)
        self.destroy()
        self.dir.mkdir(parents=True)
        _run("cp", "-a", "--reflink=auto", str(image), str(self.root))
        (self.root / "etc/hostname").write_text(self.name + "\n")
        (self.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{self.ip} {self.name}\n")
        ssh_dir = self.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        (self.root / "etc/machine-id").write_text("")  # a new id at first boot
        # A container's PID 1 ignores SIGTERM, so at poweroff systemd waits its whole stop timeout before it
        # kills what pods left running (on any host, without graceful node shutdown); 15 s, not 90, here.
        conf = self.root / "etc/systemd/system.conf.d/pynode-machine.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("[Manager]\nDefaultTimeoutStopSec=15s\n")
        if self.upstream_kubelet:
            self._upstream_kubelet_shims()
        self.console_log.unlink(missing_ok=True)
        self._network()

    def _upstream_kubelet_shims(self) -> None:
        shims = self.root / SHIMS_DIR.lstrip("/")
        shims.mkdir(parents=True)
        for key, value in KERNEL_TUNABLES.items():
            (shims / key.replace("/", ".")).write_text(f"{value}\n")
        units = self.root / "etc/systemd/system"
        (units / SHIMS_UNIT_NAME).write_text(upstream_kubelet_shims_unit())
        (units / "sysinit.target.wants" / SHIMS_UNIT_NAME).symlink_to(f"/etc/systemd/system/{SHIMS_UNIT_NAME}")

    def _ip(self, *args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return _run("ip", *(["-n", netns] if netns else []), *args, check=check)

    def _network(self) -> None:
        ns = self.netns
        self._ip("netns", "add", ns)
        # A fixed MAC per machine: a recreated machine then matches what the host's ARP cache holds for its
        # address, instead of waiting out the stale entry (seconds to tens of seconds).
        mac = f"02:70:79:6d:00:{self.index:02x}"  # locally administered; "pym"
        self._ip("link", "add", self.host_veth, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", ns)
        self._ip("link", "set", self.host_veth, "master", self.cluster.bridge, "up")
        self._ip("link", "set", "lo", "up", netns=ns)
        self._ip("addr", "add", f"{self.ip}/{self.cluster.node_network.prefixlen}", "dev", "eth0", netns=ns)
        self._ip("link", "set", "eth0", "up", netns=ns)
        # The host (the apiserver's proxy to pods, the tests) reaches the machine's pods through it.
        self._ip("route", "replace", self.pod_subnet, "via", self.ip, "dev", self.cluster.bridge)

    def boot(self, timeout: float = 120) -> float:
        """Start systemd in the machine and wait until it is up and answers ssh; returns the seconds taken."""
        started = time.monotonic()
        repo = package_repository(self.cluster)
        console = open(self.console_log, "ab")
        self.process = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", f"--directory={self.root}",
             f"--machine={self.name}", f"--network-namespace-path=/run/netns/{self.netns}", "--capability=all",
             "--system-call-filter=@keyring bpf", f"--bind-ro={repo}:/srv/pynode-debs", "--console=passive",
             "--resolv-conf=off", "--timezone=off", "--boot"],
            env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}, stdin=subprocess.DEVNULL,
            stdout=console, stderr=console, start_new_session=True)
        console.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UpError(f"machine {self.name}: systemd-nspawn exited ({self.process.returncode}); "
                              f"see {self.console_log}")
            try:
                socket.create_connection((self.ip, 22), timeout=1).close()
                state = self.ssh("systemctl", "is-system-running", "--wait", check=False, timeout=60).stdout.strip()
                if state in ("running", "degraded"):
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.3)
        raise UpError(f"machine {self.name}: not up with ssh within {timeout:.0f}s; see {self.console_log}")

    def poweroff(self, timeout: float = 120) -> None:
        """`systemctl poweroff` inside, then wait for systemd-nspawn to exit (the tree stays)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.ssh("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            raise UpError(f"machine {self.name}: did not power off within {timeout:.0f}s; killed")

    def destroy(self) -> None:
        """Stop the machine if it runs, and remove its tree, namespace, veth and host route."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.poweroff(timeout=60)
            except UpError as err:
                log(str(err))
        elif self._nspawn_pids():
            # Booted by another process (a run that kept it): powered off from inside too, since a SIGKILLed
            # systemd-nspawn leaves journald, still dying, writing into the tree being removed.
            try:
                self.ssh("systemctl", "poweroff", check=False, timeout=30)
            except subprocess.TimeoutExpired:
                log(f"machine {self.name}: no answer to poweroff over ssh; killing it")
            deadline = time.monotonic() + 60
            while self._nspawn_pids() and time.monotonic() < deadline:
                time.sleep(0.5)
        for pid in self._nspawn_pids():
            os.kill(pid, signal.SIGKILL)
        self._ip("route", "delete", self.pod_subnet, "via", self.ip, check=False)
        self._ip("link", "delete", self.host_veth, check=False)
        if Path(f"/run/netns/{self.netns}").exists():
            self._ip("netns", "delete", self.netns, check=False)
        if self.dir.exists():
            from .cluster import unmount_all

            unmount_all(self.dir)
            shutil.rmtree(self.dir)

    def _nspawn_pids(self) -> list[int]:
        """systemd-nspawn processes still running this machine's tree (one a crashed run left, say)."""
        found = []
        needle = f"--directory={self.root}".encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if cmdline.startswith(b"systemd-nspawn\0") and needle in cmdline.split(b"\0"):
                    found.append(int(proc.name))
        return found

    # -- access

    def ssh_argv(self) -> list[str]:
        return ["ssh", "-i", str(ssh_key(self.cluster)), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5", f"root@{self.ip}"]

    def ssh(self, *command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        import shlex

        return _run(*self.ssh_argv(), " ".join(shlex.quote(c) for c in command), check=check, timeout=timeout)

    def inventory(self, extra: dict) -> dict:
        """An ansible inventory (YAML-able) that reaches this machine over ssh."""
        host = {"ansible_host": self.ip, "ansible_user": "root",
                "ansible_ssh_private_key_file": str(ssh_key(self.cluster)),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "pynode_node_ip": self.ip, "containerd_cni_subnet": self.pod_subnet, **extra}
        return {"all": {"children": {"nodes": {"hosts": {self.name: host}}}}}
