"""Engine object names from free-text task names: one sanitiser for Swarm and Kubernetes.

Task names are free text in HCL; engines accept far less, and each its own rules:

- Swarm services: ``^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$``, at most 63 characters; configs and
  secrets: ``^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$``, at most 64 (moby/swarmkit
  ``manager/controlapi/common.go``, ``validateAnnotations`` / ``validateConfigOrSecretAnnotations``);
- Kubernetes object names: DNS-1123 labels, ``[a-z0-9-]``, at most 63, alphanumeric at both
  ends; label values: ``[A-Za-z0-9_.-]``, at most 63, alphanumeric at both ends
  (kubernetes/apimachinery ``pkg/util/validation/validation.go``, ``IsDNS1123Label``,
  ``IsValidLabelValue``).

A name that had to change (a character replaced, case folded, cut to length) gets a short
hash of the *original* text, so ``orders/eu`` and ``orders?eu`` never meet; a name that
passes as it is keeps its readable form.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63  # Kubernetes names and label values, Swarm service names
SWARM_OBJECT_MAX = 64  # Swarm config and secret names
_HASH = 8


def digest(text: str, size: int = _HASH) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def sanitise(text: str, *, prefix: str = "", max_len: int = DNS_LABEL_MAX, extra: str = "", lower: bool = True) -> str:
    """``prefix + text`` reduced to letters, digits, ``-`` and the characters in ``extra``,
    alphanumeric at both ends, at most ``max_len`` long; hash-suffixed when it changed."""
    wanted = prefix + text
    cleaned = wanted.lower() if lower else wanted
    cleaned = re.sub(rf"[^A-Za-z0-9{re.escape(extra)}-]", "-", cleaned)
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    if cleaned == wanted and 0 < len(cleaned) <= max_len:
        return cleaned
    suffix = digest(text)
    head = re.sub(r"[^A-Za-z0-9]+$", "", cleaned[: max_len - len(suffix) - 1])
    return f"{head}-{suffix}" if head else suffix


def resource_name(task: str) -> str:
    """``dstream-<task>`` as a DNS-1123 label: a Kubernetes object or Swarm service name."""
    return sanitise(task, prefix="dstream-")


def label_value(task: str) -> str:
    """The task name as a Kubernetes label value (``[A-Za-z0-9_.-]``, case kept)."""
    return sanitise(task, extra="_.", lower=False)


def swarm_object_name(service: str, kind: str, unique: str) -> str:
    """A Swarm config or secret name: ``<service>-<kind>-<unique>`` within 64 characters.
    ``unique`` (a content hash with the service in it, or a random id) keeps two services
    whose names share a long head apart."""
    tail = "-" + sanitise(f"{kind}-{unique}", max_len=SWARM_OBJECT_MAX // 2, extra="_.")
    return re.sub(r"[^A-Za-z0-9]+$", "", service[: SWARM_OBJECT_MAX - len(tail)]) + tail
