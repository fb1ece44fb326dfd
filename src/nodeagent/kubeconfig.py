"""Where the apiserver is and how to reach it, from a kubeconfig file or the pod's service account.

What the agents' kubeconfigs hold (kubeadm's kubelet.conf and bootstrap-kubelet.conf, kube-proxy's): the
current context's cluster (`server`, `certificate-authority` or `-data`, `insecure-skip-tls-verify`) and user (`client-certificate`/`client-key` or their `-data`, `token` or `tokenFile`).
Relative paths are relative to the file. Without a file: in a pod, its service account
(KUBERNETES_SERVICE_HOST/PORT, the mounted token and CA); else $KUBECONFIG, then ~/.kube/config. Exec and
auth-provider plugins are not supported: they name themselves in the error.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeconfigError(Exception):
    """The kubeconfig cannot be used; the message says which file and why."""


@dataclass
class Access:
    server: str
    tls: ssl.SSLContext
    headers: dict[str, str] = field(default_factory=dict)  # Authorization, when the user has a token


def _data(entry: dict, key: str, base: Path) -> bytes | None:
    """The bytes of `key-data` (base64) or of the file `key` names."""
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / entry[key]).read_bytes()
    return None


def _tls(cluster: dict, user: dict, base: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    if cluster.get("insecure-skip-tls-verify"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca = _data(cluster, "certificate-authority", base)
        if ca is not None:
            context.load_verify_locations(cadata=ca.decode())  # that CA alone, as client-go trusts it
        else:
            context.load_default_certs()
    cert, key = _data(user, "client-certificate", base), _data(user, "client-key", base)
    if cert is not None:
        # ssl loads a certificate and key only from files: a private temporary one for inline data.
        with tempfile.NamedTemporaryFile("wb", prefix="kubeconfig-", suffix=".pem") as pem:
            os.fchmod(pem.fileno(), 0o600)
            pem.write(cert + b"\n" + (key or b""))
            pem.flush()
            context.load_cert_chain(pem.name)
    return context


def from_file(path: Path) -> Access:
    try:
        document = yaml.safe_load(path.read_text()) or {}
        contexts = {c["name"]: c.get("context") or {} for c in document.get("contexts") or []}
        clusters = {c["name"]: c.get("cluster") or {} for c in document.get("clusters") or []}
        users = {u["name"]: u.get("user") or {} for u in document.get("users") or []}
        current = contexts.get(document.get("current-context") or "", {})
        if current:
            cluster, user = clusters.get(current.get("cluster")), users.get(current.get("user")) or {}
        else:  # no context: a file with one cluster (and one user) still says where to go
            cluster = next(iter(clusters.values())) if len(clusters) == 1 else None
            user = next(iter(users.values())) if len(users) == 1 else {}
        if not cluster or not cluster.get("server"):
            raise KubeconfigError("no cluster with a server")
        for plugin in ("exec", "auth-provider"):
            if user.get(plugin):
                raise KubeconfigError(f"the user's {plugin} plugin is not supported")
        base = path.parent
        headers = {}
        token = user.get("token") or ((base / user["tokenFile"]).read_text().strip() if user.get("tokenFile") else "")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return Access(cluster["server"], _tls(cluster, user, base), headers)
    except KubeconfigError as err:
        raise KubeconfigError(f"kubeconfig {path}: {err}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError, ssl.SSLError) as err:
        raise KubeconfigError(f"kubeconfig {path}: {err}") from err


def in_cluster() -> Access | None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (SERVICE_ACCOUNT / "token").exists():
        return None
    tls = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Access(server, tls, {"Authorization": f"Bearer {(SERVICE_ACCOUNT / 'token').read_text().strip()}"})


def load(path: Path | None) -> Access:
    """`path`'s access, or (None) the service account's, $KUBECONFIG's or ~/.kube/config's."""
    if path is not None:
        return from_file(path)
    found = in_cluster()
    if found is not None:
        return found
    fallback = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    return from_file(Path(fallback))
