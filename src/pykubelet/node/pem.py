"""What the kubelet must know of its certificates at every start, without the cryptography library: when one
is valid (read from its DER) and whether a file's key belongs to its certificate (asked of the ssl module).

cryptography (about 7 MiB of the kubelet's memory once loaded) is imported only to make a key, a CSR or a
self-signed certificate: at TLS bootstrap and each rotation, not at every start.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import ssl
from pathlib import Path

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_UTC_TIME, _GENERALIZED_TIME, _SEQUENCE, _VERSION = 0x17, 0x18, 0x30, 0xA0


def _item(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER item at `at`: (tag, start of its contents, end of its contents)."""
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:
        size = length & 0x7F
        length, at = int.from_bytes(der[at:at + size], "big"), at + size
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _time(tag: int, text: bytes) -> dt.datetime:
    value = text.decode("ascii").rstrip("Z")
    if tag == _UTC_TIME:  # YYMMDDHHMMSS: 50-99 are 19xx, as RFC 5280 says
        value = ("19" if int(value[:2]) >= 50 else "20") + value
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"not a time (DER tag {tag:#x})")
    return dt.datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)


def validity(pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) of the first certificate in `pem`; ValueError if there is none or it is malformed."""
    found = _PEM.search(pem)
    if not found:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
        _, at, _ = _item(der, 0)  # Certificate
        tag, at, _ = _item(der, at)  # TBSCertificate
        if tag != _SEQUENCE:
            raise ValueError("not a certificate")
        tag, start, end = _item(der, at)  # the version, or (v1) the serial number
        if tag == _VERSION:
            tag, start, end = _item(der, end)  # the serial number
        for _ in range(2):  # signature, issuer
            tag, start, end = _item(der, end)
        tag, start, end = _item(der, end)  # validity
        if tag != _SEQUENCE:
            raise ValueError("no validity")
        before_tag, before_start, before_end = _item(der, start)
        after_tag, after_start, after_end = _item(der, before_end)
        return (_time(before_tag, der[before_start:before_end]), _time(after_tag, der[after_start:after_end]))
    except (IndexError, UnicodeDecodeError, base64.binascii.Error) as err:
        raise ValueError(f"malformed certificate: {err}") from None


def key_matches(path: Path, key_path: Path | None = None) -> bool:
    """Whether the private key (in `path`, or `key_path`) belongs to the certificate in `path`."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(path), str(key_path) if key_path else None)
    except (ssl.SSLError, OSError):
        return False
    return True
