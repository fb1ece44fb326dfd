"""The host side of `vagrant/`'s VMs on this machine: libvirt in a network namespace of its own, bridged into the
local cluster's network, so that the VMs sit beside the local nodes and nothing is added to the host's own
firewall or routes but a veth and the VMs' pod routes.

    host: bridge pynode0 (10.221.0.1/24, the apiserver)
      |-- veth pyv-host <-> pyv-ns in netns pynode-vagrant, a port of bridge pyvbr0 there
                             libvirtd and virtlogd run in that netns; its libvirt network `pynode-vagrant`
                             (transient) is the bridge pyvbr0 (10.221.0.60/24) with dnsmasq handing out
                             10.221.0.61-67 to fixed MACs only, and no router: the VMs get no default route
      VM i: a tap on pyvbr0, eth0 10.221.0.(60+i), pods 10.222.(240+i).0/24
    host routes: each VM's pod subnet via the VM (added by `up`, removed by `down`)

vagrant-libvirt uses that network as its management network (its name and address are in the Vagrantfile):
it finds the network there and neither creates nor removes it, and finds each VM's address in its DHCP
leases. libvirt's own firewall rules for the network (DHCP and DNS from the VMs) go to the netns's tables.

The Vagrantfile is the one description of the VMs (names, addresses, pod subnets, from PYNODE_* variables);
this module mirrors its address plan (`worker_ip`, `worker_mac`, `worker_pod_subnet`), which a unit test
checks against it. `python -m localcluster vagrant up|destroy|status|net-up|net-down|env` drives it all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import bootstrap, procs, wheels
from .procs import UpError, run_checked
from .settings import Cluster

REPO = Path(__file__).resolve().parents[1]
VAGRANT_DIR = REPO / "vagrant"
NETNS = "pynode-vagrant"
NETWORK = "pynode-vagrant"  # the libvirt network; PYNODE_LIBVIRT_NETWORK in the Vagrantfile
BRIDGE = "pyvbr0"
HOST_VETH, NS_VETH = "pyv-host", "pyv-ns"
GATEWAY_INDEX = 60  # the netns bridge's address: 10.221.0.60
FIRST_INDEX = 61  # worker 1's address: 10.221.0.61 (PYNODE_FIRST_IP)
MAX_WORKERS = 7  # .61-.67; .68 and .69 are the VM tests' externalIP and load-balancer IP
POD_SUBNET_BASE = 240  # worker i's pods: 10.222.(240+i).0/24 (PYNODE_POD_SUBNET_BASE)
NAME_PREFIX = "pynode-w"
STATE = Path(os.environ.get("PYNODE_VAGRANT_STATE", "/var/lib/pynode-vagrant"))


def log(msg: str) -> None:
    print(f"[vagrant] {msg}", file=sys.stderr, flush=True)


def _run(*argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return run_checked(*argv, timeout=timeout, **kw)


# -- the address plan (the Vagrantfile's, mirrored)

def worker_name(i: int) -> str:
    return f"{NAME_PREFIX}{i}"


def worker_ip(cluster: Cluster, i: int) -> str:
    return str(cluster.node_network.network_address + FIRST_INDEX - 1 + i)


def worker_mac(cluster: Cluster, i: int) -> str:
    last = int(ipaddress.ip_address(worker_ip(cluster, i))) & 0xFF
    return f"02:70:79:76:00:{last:02x}"  # locally administered; "pyv"


def worker_pod_subnet(i: int) -> str:
    return f"10.222.{POD_SUBNET_BASE + i}.0/24"


def gateway_ip(cluster: Cluster) -> str:
    return str(cluster.node_network.network_address + GATEWAY_INDEX)


def network_xml(cluster: Cluster) -> str:
    hosts = "\n".join(f"      <host mac='{worker_mac(cluster, i)}' name='{worker_name(i)}' ip='{worker_ip(cluster, i)}'/>"
                      for i in range(1, MAX_WORKERS + 1))
    return f"""<network>
  <name>{NETWORK}</name>
  <bridge name='{BRIDGE}' stp='off' delay='0'/>
  <mac address='02:70:79:76:00:{GATEWAY_INDEX:02x}'/>
  <ip address='{gateway_ip(cluster)}' netmask='{cluster.node_network.netmask}'>
    <dhcp>
      <range start='{worker_ip(cluster, 1)}' end='{worker_ip(cluster, MAX_WORKERS)}'/>
{hosts}
    </dhcp>
  </ip>
</network>
"""


# -- libvirt in its own network namespace

def _pidfile(name: str) -> Path:
    return STATE / "run" / f"{name}.pid"


def _alive(name: str) -> int | None:
    try:
        pid = int(_pidfile(name).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("virsh", "--connect", "qemu:///system", "--quiet", *args, check=check)


def _cgroup_mounts() -> str:
    """Shell commands that mount this process's cgroup hierarchies again below a fresh /sys/fs/cgroup."""
    commands = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, target, fstype, options, *_ = line.split()
        if fstype in ("cgroup", "cgroup2", "tmpfs") and target.startswith("/sys/fs/cgroup"):
            if fstype == "tmpfs" and target != "/sys/fs/cgroup":
                continue
            opts = ",".join(o for o in options.split(",") if o not in ("ro", "rw", "relatime", "nosuid", "nodev",
                                                                        "noexec"))
            commands.append(f"mkdir -p {target} && mount -t {fstype} -o {opts or 'defaults'} {fstype} {target} &&")
    return " ".join(commands)


def net_up(cluster: Cluster, workers: int) -> None:
    """The netns, its veth into the cluster bridge, libvirtd and virtlogd in it, the libvirt network, and the
    host routes to the VMs' pod subnets (idempotent)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise UpError(f"vagrant: between 1 and {MAX_WORKERS} workers, not {workers}")
    for tool, package in (("libvirtd", "libvirt-daemon-system"), ("virsh", "libvirt-clients"),
                          ("dnsmasq", "dnsmasq-base"), ("qemu-system-x86_64", "qemu-system-x86"),
                          ("vagrant", "vagrant")):
        if not shutil.which(tool):
            raise UpError(f"vagrant: '{tool}' is missing (Debian package {package}; run `make vagrant-deps`)")
    if _run("ip", "link", "show", "dev", cluster.bridge, check=False).returncode != 0:
        raise UpError(f"vagrant: no cluster bridge {cluster.bridge}; run `make up` first")
    (STATE / "run").mkdir(parents=True, exist_ok=True)
    if not Path(f"/run/netns/{NETNS}").exists():
        _run("ip", "netns", "add", NETNS)
    if _run("ip", "link", "show", "dev", HOST_VETH, check=False).returncode != 0:
        _run("ip", "link", "add", HOST_VETH, "type", "veth", "peer", "name", NS_VETH, "netns", NETNS)
    _run("ip", "link", "set", HOST_VETH, "master", cluster.bridge, "up")
    _run("ip", "-n", NETNS, "link", "set", "lo", "up")
    if not _alive("virtlogd"):
        _run("virtlogd", "--daemon", "--pid-file", str(_pidfile("virtlogd")))
    if not _alive("libvirtd"):
        # `ip netns exec` gives the daemon a sysfs of the netns (its bridge and taps) in a mount namespace of
        # its own, where the host's cgroup hierarchies are mounted again (the same hierarchies) for the VMs.
        _run("ip", "netns", "exec", NETNS, "sh", "-c",
             f"{_cgroup_mounts()} exec libvirtd --daemon --pid-file {_pidfile('libvirtd')}")
        deadline = time.monotonic() + 30
        while _virsh("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise UpError("vagrant: libvirtd did not answer within 30 s")
            time.sleep(0.3)
    if _virsh("net-info", NETWORK, check=False).returncode != 0:
        xml = STATE / "network.xml"
        xml.write_text(network_xml(cluster))
        _virsh("net-create", str(xml))  # transient: gone with libvirtd, nothing in /etc/libvirt
    # The netns's end into the bridge libvirt made.
    _run("ip", "-n", NETNS, "link", "set", NS_VETH, "master", BRIDGE, "up")
    for i in range(1, workers + 1):
        _run("ip", "route", "replace", worker_pod_subnet(i), "via", worker_ip(cluster, i), "dev", cluster.bridge)
    (STATE / "workers").write_text(f"{workers}\n")


def net_down(cluster: Cluster) -> None:
    """Everything net_up made, in reverse; refuses while a VM of ours still runs."""
    if _alive("libvirtd"):
        running = _virsh("list", "--name", check=False).stdout.split()
        if running:
            raise UpError(f"vagrant: VMs still run ({', '.join(running)}); `vagrant destroy -f` first")
        _virsh("net-destroy", NETWORK, check=False)
    for name in ("libvirtd", "virtlogd"):
        pid = _alive(name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
        _pidfile(name).unlink(missing_ok=True)
    for i in range(1, MAX_WORKERS + 1):
        _run("ip", "route", "delete", worker_pod_subnet(i), "via", worker_ip(cluster, i), check=False)
    _run("ip", "link", "delete", HOST_VETH, check=False)
    if Path(f"/run/netns/{NETNS}").exists():
        _run("ip", "netns", "delete", NETNS)
    shutil.rmtree(STATE, ignore_errors=True)


# -- what the Vagrantfile reads

def environment(cluster: Cluster, workers: int, proxy_mode: str, agents: str = "pynode",
                wheelhouse: Path | None = None) -> dict[str, str]:
    """PYNODE_* variables for the Vagrantfile: the local cluster's join line, artefacts and address plan."""
    images = sorted(str(p) for p in cluster.images.glob("pause-*.tar")) + \
        sorted(str(p) for p in cluster.images.glob("busybox-*.tar"))
    env = {
        "PYNODE_WORKERS": str(workers),
        "PYNODE_PROXY_MODE": proxy_mode,
        "PYNODE_AGENTS": agents,
        "PYNODE_JOIN_ENDPOINT": f"{cluster.host_ip}:{cluster.apiserver_port}",
        "PYNODE_JOIN_TOKEN": bootstrap.token(cluster),
        "PYNODE_JOIN_CA_HASH": bootstrap.ca_cert_hash(cluster),
        "PYNODE_CLUSTER_CIDR": str(cluster.pod_cidr),
        "PYNODE_KUBEADM": str(cluster.bin / "kubeadm"),
        "PYNODE_UPSTREAM_BIN": str(cluster.bin),
        "PYNODE_IMAGES": ":".join(images),
        "PYNODE_LIBVIRT_NETWORK": NETWORK,
        "PYNODE_NODE_NETWORK": str(cluster.node_network),
    }
    if wheelhouse is not None:
        env["PYNODE_WHEELHOUSE"] = str(wheelhouse)
    return env


def vagrant(*args: str, env: dict[str, str], check: bool = True, timeout: float = 3600,
            stream: bool = False) -> subprocess.CompletedProcess:
    """`vagrant ARGS` in vagrant/ with the venv's ansible on PATH."""
    venv_bin = Path(sys.executable).parent
    full = {**os.environ, **env, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "VAGRANT_NO_COLOR": "1",
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
    if stream:
        proc = subprocess.Popen(["vagrant", *args], cwd=VAGRANT_DIR, env=full, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Progress: " in line:  # a box upload's progress, thousands of updates on one line
                line = re.sub(r"(\x1b\[K)?Progress: [^\x1b]*", "", line)
                if not line.strip():
                    continue
            lines.append(line)
            sys.stderr.write(line)
        proc.wait(timeout)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines), "")
    else:
        result = subprocess.run(["vagrant", *args], cwd=VAGRANT_DIR, env=full, capture_output=True, text=True,
                                timeout=timeout)
    if check and result.returncode != 0:
        raise UpError(f"`vagrant {' '.join(args)}` failed ({result.returncode}):\n"
                      f"{(result.stdout + result.stderr)[-4000:]}")
    return result


def dump_env(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={json.dumps(v)}" for k, v in sorted(env.items()))


# -- the whole: `python -m localcluster vagrant ...`

def box() -> str:
    """vagrant/box/build.sh: the box built and added once (cached), its path."""
    proc = subprocess.run([str(VAGRANT_DIR / "box" / "build.sh")], capture_output=True, text=True, timeout=3600)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise UpError("vagrant: building the box failed (vagrant/box/build.sh, above)")
    return proc.stdout.strip()


def prepare(cluster: Cluster, workers: int, proxy_mode: str, agents: str = "pynode") -> dict[str, str]:
    """Everything `vagrant up` needs here, and the PYNODE_* variables that point the Vagrantfile at it."""
    from . import cluster as local

    if not all(local.status(cluster).values()):
        raise UpError("vagrant: the local cluster is not running; `make up` first")
    local.build_upstream(cluster, ["kubeadm", *(["kubelet", "kube-proxy"] if agents == "upstream" else [])])
    box()
    if agents == "pynode":
        wheels.wheelhouse(DIST)
    net_up(cluster, workers)
    return local_environment(cluster, workers, proxy_mode, agents)


DIST = STATE.parent / "pynode-vagrant-dist"  # the wheelhouse prepare() builds


def local_environment(cluster: Cluster, workers: int, proxy_mode: str, agents: str = "pynode") -> dict[str, str]:
    """The PYNODE_* variables for VMs of this machine's local cluster (what prepare() returns)."""
    env = environment(cluster, workers, proxy_mode, agents, DIST / "wheelhouse" if agents == "pynode" else None)
    env["PYNODE_SERVICE_ROUTE_VIA"] = cluster.host_ip
    # Software emulation unless told otherwise: on this project's machine /dev/kvm opens and a guest gets as far
    # as GRUB, but its kernel hangs at entry (nested virtualisation), while QEMU's TCG boots it in about 45 s.
    env["PYNODE_LIBVIRT_DRIVER"] = os.environ.get("PYNODE_LIBVIRT_DRIVER") or "qemu"
    return env


def leftovers() -> list[str]:
    """What a destroyed set of VMs must not leave: domains, their volumes, host routes to their pods."""
    found = []
    if _alive("libvirtd"):
        found += [f"domain {d}" for d in _virsh("list", "--all", "--name", check=False).stdout.split()
                  if d.startswith("vagrant_")]
        vols = _virsh("vol-list", "default", check=False).stdout.split("\n")
        found += [f"volume {v.split()[0]}" for v in vols if v.strip() and v.split()[0].startswith("vagrant_pynode-w")]
    routes = _run("ip", "route", "show", check=False).stdout
    found += [f"route {line.strip()}" for line in routes.splitlines() for i in range(1, MAX_WORKERS + 1)
              if line.startswith(worker_pod_subnet(i) + " ")]
    return found


def main(cluster: Cluster, action: str, workers: int = 2, proxy_mode: str = "iptables",
         agents: str = "pynode") -> int:
    from . import lock

    if action == "net-up":
        net_up(cluster, workers)
    elif action == "net-down":
        net_down(cluster)
    elif action in ("up", "env"):
        with lock.holding(cluster, f"vagrant {action}"):
            env = prepare(cluster, workers, proxy_mode, agents)
            if action == "env":
                print(dump_env(env))
                return 0
            started = time.monotonic()
            up = vagrant("up", env=env, stream=True, check=False)
            log(f"vagrant up took {time.monotonic() - started:.0f}s" +
                (f" and failed (exit {up.returncode}); its output is above" if up.returncode else ""))
            status = vagrant("status", env=env, check=False).returncode
            return up.returncode or status
    elif action == "status":
        print(vagrant("status", env={"PYNODE_WORKERS": str(_workers(workers))}, check=False).stdout)
    elif action == "destroy":
        count = _workers(workers)
        vagrant("destroy", "-f", env={"PYNODE_WORKERS": str(count)}, stream=True)
        for i in range(1, count + 1):
            procs.kubectl(cluster, "delete", "node", worker_name(i), "--ignore-not-found")
        net_down(cluster)
        left = leftovers()
        if left:
            raise UpError(f"vagrant: left behind: {', '.join(left)}")
    return 0


def _workers(default: int) -> int:
    try:
        return int((STATE / "workers").read_text())
    except (OSError, ValueError):
        return default
