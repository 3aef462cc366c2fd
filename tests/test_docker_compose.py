"""docker-compose.yml cannot run here (no Docker engine): check what it references, and
that the documented path works on paper: ``docker compose up -d`` configures the database,
and one cluster file serves a client on the host (through the port mapping) and the
``tests`` service (issue 17, point 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_services_and_dependencies() -> None:
    services = load()["services"]
    assert {"fdb", "fdb-init", "tests"} <= services.keys()
    for svc in services.values():
        for dep in svc.get("depends_on", {}):
            assert dep in services, dep


def test_server_version_is_pinned_by_a_variable_in_the_supported_line() -> None:
    services = load()["services"]
    image = services["fdb"]["image"]
    assert image.startswith("foundationdb/foundationdb:${FDB_VERSION:-7.3.")
    assert services["fdb-init"]["image"] == image


def test_cluster_file_and_client_library_paths_agree() -> None:
    services = load()["services"]
    server_file = services["fdb"]["environment"]["FDB_CLUSTER_FILE"]
    volume_dir = str(Path(server_file).parent)
    for name in ("fdb", "fdb-init"):
        mounts = [v.split(":")[1] for v in services[name]["volumes"]]
        assert volume_dir in mounts, (name, mounts)
    assert f"-C {server_file}" in services["fdb-init"]["entrypoint"][-1]
    lib_dir = services["tests"]["environment"]["LD_LIBRARY_PATH"]
    assert lib_dir in services["fdb-init"]["entrypoint"][-1]


def test_one_cluster_file_serves_the_host_and_the_tests_service() -> None:
    from fdbworkers._backends.fdb import check_connection_string

    services = load()["services"]
    fdb = services["fdb"]
    repo_file = ROOT / "docker" / "fdb.cluster"
    content = repo_file.read_text().strip()
    assert check_connection_string(content) is None
    # The server advertises 127.0.0.1 (clients connect to the advertised addresses, so a
    # container address would be unreachable from the host) and writes this very file.
    assert fdb["environment"]["FDB_NETWORKING_MODE"] == "host"
    assert fdb["environment"]["FDB_CLUSTER_FILE_CONTENTS"] == content
    host, port = content.split("@", 1)[1].rsplit(":", 1)
    assert host == "127.0.0.1" and fdb["environment"]["FDB_PORT"] == port
    assert f"127.0.0.1:{port}:{port}" in fdb["ports"]  # the host reaches it here
    # fdb-init and tests share the server's network, where 127.0.0.1:PORT is the server.
    for name in ("fdb-init", "tests"):
        assert services[name]["network_mode"] == "service:fdb", name
    # tests use the repository's file, the one the host uses (mounted at /src).
    assert services["tests"]["environment"]["FDB_CLUSTER_FILE"] == "/src/docker/fdb.cluster"


def test_the_documented_commands_start_and_configure_the_database() -> None:
    services = load()["services"]
    # `docker compose up -d` starts every service without a profile: fdb and fdb-init
    # (the configuration), not the tests (they run with `docker compose run`).
    assert "profiles" not in services["fdb"] and "profiles" not in services["fdb-init"]
    assert services["tests"].get("profiles") == ["tests"]
    assert services["fdb-init"]["depends_on"]["fdb"]["condition"] == "service_started"
    assert (
        services["tests"]["depends_on"]["fdb-init"]["condition"] == "service_completed_successfully"
    )
    readme = (ROOT / "README.md").read_text()
    header = (ROOT / "docker-compose.yml").read_text()
    for text in (readme, header):
        assert "docker compose up -d fdb`" not in text and "up -d fdb " not in text
        assert "docker compose up -d" in text and "docker/fdb.cluster" in text


def test_commands_exist_in_the_repository() -> None:
    services = load()["services"]
    cmd = services["tests"]["command"][0]
    assert (ROOT / cmd).is_file() and cmd == "./scripts/test"
    assert services["tests"]["working_dir"] == "/src"
    assert ".:/src" in services["tests"]["volumes"]
