"""Choosing a backend from a cluster address.

Addresses (the CLI's ``--cluster``, ``FDBWORKERS_CLUSTER``):

``memory`` or ``memory:``
    a fresh embedded engine in this process (its data lives as long as the handle).
``sim://HOST:PORT``
    the embedded engine served by ``fdbworkers devserver`` (``fdbworkers._backends.devserver``)
    in another process, so that several processes share one database; a
    :class:`~fdbworkers._backends.remote.RemoteDatabase` (backend ``"remote-engine"``). It
    connects on first use; when the server goes away, operations fail with 1026
    ``connection_failed`` and a later transaction reconnects.
``fdb``, ``fdb:`` or ``fdb:PATH``
    a real FoundationDB cluster through libfdb_c; without PATH the cluster file is
    ``FDB_CLUSTER_FILE``, else ``/etc/foundationdb/fdb.cluster``.
a path to a cluster file
    the same as ``fdb:PATH``.

Without an address, the environment variable ``FDBWORKERS_CLUSTER`` is used (any of
the forms above, e.g. ``FDBWORKERS_CLUSTER=sim://127.0.0.1:4700`` to point every
process of a demo at one dev server), else ``FDB_CLUSTER_FILE`` (a real cluster), else
:class:`ConfigError` explains the choices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .._db import Database
from .._errors import ConfigError

__all__ = ["ClusterAddress", "open_database", "parse_cluster_address"]

_HELP = (
    "use 'memory' (embedded engine in this process), 'sim://HOST:PORT' (a dev server), "
    "'fdb' or 'fdb:/path/to/fdb.cluster' (a real FoundationDB cluster), or a path to a "
    "cluster file"
)


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """A parsed cluster address (pure)."""

    kind: Literal["memory", "sim", "fdb"]
    #: The cluster file for ``fdb`` (None: FDB_CLUSTER_FILE / default location).
    cluster_file: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "memory":
            return "memory"
        if self.kind == "sim":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"sim://{host}:{self.port}"
        return f"fdb:{self.cluster_file}" if self.cluster_file else "fdb"


def _parse_host_port(address: str, rest: str) -> tuple[str, int]:
    if not rest or "/" in rest.rstrip("/"):
        raise ConfigError(f"bad cluster address {address!r}: expected sim://HOST:PORT")
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [IPv6]:port
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bad cluster address {address!r}: expected sim://[IPV6]:PORT")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ConfigError(f"bad cluster address {address!r}: the port is missing")
    if not host:
        raise ConfigError(f"bad cluster address {address!r}: the host is missing")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad cluster address {address!r}: port {port_text!r} is not 1..65535")
    return host, int(port_text)


def parse_cluster_address(address: str) -> ClusterAddress:
    """Parse an address (see the module doc); :class:`ConfigError` when it is bad."""
    if not isinstance(address, str):
        raise ConfigError(f"a cluster address is a string, not {type(address).__name__}")
    text = address.strip()
    if not text:
        raise ConfigError(f"the cluster address is empty: {_HELP}")
    lowered = text.lower()
    if lowered in ("memory", "memory:"):
        return ClusterAddress("memory")
    if lowered.startswith("memory:"):
        raise ConfigError(
            f"bad cluster address {address!r}: 'memory' takes no argument (each "
            f"'memory' handle is a fresh engine; use sim://HOST:PORT to share one)"
        )
    if lowered.startswith("sim://"):
        host, port = _parse_host_port(address, text[len("sim://") :])
        return ClusterAddress("sim", host=host, port=port)
    if lowered.startswith("sim:"):
        raise ConfigError(f"bad cluster address {address!r}: expected sim://HOST:PORT")
    if lowered in ("fdb", "fdb:"):
        return ClusterAddress("fdb")
    if lowered.startswith("fdb://"):
        raise ConfigError(
            f"bad cluster address {address!r}: a real cluster is named by its cluster "
            f"file, 'fdb:/path/to/fdb.cluster'"
        )
    if lowered.startswith("fdb:"):
        return ClusterAddress("fdb", cluster_file=text[len("fdb:") :])
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isalnum():
        raise ConfigError(f"unknown cluster address scheme {scheme!r} in {address!r}: {_HELP}")
    if os.path.isdir(text):
        raise ConfigError(f"cluster address {address!r} is a folder, not a cluster file")
    if os.path.isfile(text):
        return ClusterAddress("fdb", cluster_file=text)
    raise ConfigError(f"cluster address {address!r} is neither a known form nor a file: {_HELP}")


def _default_address() -> str:
    explicit = os.environ.get("FDBWORKERS_CLUSTER", "").strip()
    if explicit:
        return explicit
    if os.environ.get("FDB_CLUSTER_FILE", "").strip():
        return "fdb"
    raise ConfigError(
        "no cluster given: pass one, or set FDBWORKERS_CLUSTER (e.g. 'memory'), or "
        f"FDB_CLUSTER_FILE for a real cluster; {_HELP}"
    )


def open_database(cluster: str | None = None) -> Database:
    """Open a :class:`Database` for a cluster address (see the module doc).

    Returns at once; nothing is contacted yet. For a real cluster set
    ``db.default_timeout`` so that an unreachable one fails with 1031 instead of
    waiting. Raises :class:`ConfigError` for a bad address and
    :class:`BackendUnavailableError` when the backend cannot be used here."""
    address = parse_cluster_address(_default_address() if cluster is None else cluster)
    if address.kind == "memory":
        from .engine import Engine

        return Engine().open_database()
    if address.kind == "sim":
        from .remote import RemoteDatabase

        assert address.host is not None and address.port is not None
        return RemoteDatabase(address.host, address.port)
    from .fdb import open_fdb

    return open_fdb(address.cluster_file)
