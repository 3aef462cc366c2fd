"""docker-compose.yml cannot run here (no Docker engine): check what it references."""

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
    cluster_file = services["tests"]["environment"]["FDB_CLUSTER_FILE"]
    volume_dir = str(Path(cluster_file).parent)
    for name in ("fdb", "fdb-init", "tests"):
        mounts = [v.split(":")[1] for v in services[name]["volumes"]]
        assert volume_dir in mounts, (name, mounts)
    assert services["fdb"]["environment"]["FDB_CLUSTER_FILE"] == cluster_file
    lib_dir = services["tests"]["environment"]["LD_LIBRARY_PATH"]
    assert lib_dir in services["fdb-init"]["entrypoint"][-1]


def test_commands_exist_in_the_repository() -> None:
    services = load()["services"]
    cmd = services["tests"]["command"][0]
    assert (ROOT / cmd).is_file() and cmd == "./scripts/test"
    assert services["tests"]["working_dir"] == "/src"
    assert ".:/src" in services["tests"]["volumes"]
