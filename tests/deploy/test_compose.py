"""Static checks of deploy/docker-compose.yml and deploy/Dockerfile.

No Docker engine runs where the tests run, so these check what can be checked
without one: the services exist, every file a service refers to exists, the
ports and Kafka addresses agree between the compose file, the services'
commands and Prometheus's scrape targets, and the Dockerfile copies every
package pyproject.toml builds.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.conftest import (
    COMPOSE_FILE,
    DEPLOY,
    GRAFANA,
    PROMETHEUS_CONFIG,
    ROOT,
    load_yaml,
)

REQUIRED_SERVICES = {
    "kafka",
    "prometheus",
    "grafana",
    "generator",
    "joiner",
    "trainer",
    "serving-1",
    "serving-2",
}
KAFKA_URL = re.compile(r"kafka://([\w.-]+):(\d+)/([\w.-]+)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def headrace_invocations(service: dict[str, Any]) -> list[list[str]]:
    """The ``headrace ...`` command lines a service runs (entrypoint or shell script)."""
    entrypoint = service.get("entrypoint") or ["headrace"]
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    if entrypoint == ["headrace"]:
        return [["headrace", *command]]
    # A shell script: every `headrace ...` up to the next ; | & or newline.
    script = " ".join(command)
    return [shlex.split(m) for m in re.findall(r"\bheadrace\s[^;|&\n]*", script)]


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def by_subcommand(services: dict[str, dict[str, Any]], sub: str) -> dict[str, list[str]]:
    """Service name -> argv, for services that run ``headrace SUB``."""
    found = {}
    for name, service in services.items():
        for argv in headrace_invocations(service) if "build" in service else []:
            if argv[1] == sub:
                found[name] = argv
    return found


def listen_port(service: dict[str, Any]) -> int:
    """The container port a service's own command listens on."""
    [argv] = headrace_invocations(service) if "build" in service else [[]]
    if argv[1:2] in (["train"], ["join"]):
        return int(option(argv, "--metrics-port"))
    if argv[1:2] == ["serve"]:
        return int(option(argv, "--port"))
    raise AssertionError(f"no known listen port for {argv}")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source, for the service's volumes (short syntax)."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        result[target] = source
    return result


def container_to_host(service: dict[str, Any], path: str) -> Path:
    """Resolve a path inside a container to the deploy/ file a bind mount puts there."""
    pure = PurePosixPath(path)
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if source.startswith(".") and pure.is_relative_to(target):
            return (COMPOSE_FILE.parent / source / pure.relative_to(target)).resolve()
    raise AssertionError(f"{path} is not under any bind mount of the service")


def scrape_targets() -> dict[str, list[tuple[str, int]]]:
    jobs = {}
    for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        jobs[job["job_name"]] = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in targets]
    return jobs


def test_required_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= REQUIRED_SERVICES, REQUIRED_SERVICES - set(services)


def test_kafka_runs_kraft_without_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not [key for key in env if "ZOOKEEPER" in key]
    listeners = dict(
        reversed(item.split("://")) for item in env["KAFKA_LISTENERS"].split(",")
    )  # ":9093" -> "CONTROLLER"
    controller_port = next(p for p, name in listeners.items() if name == "CONTROLLER")
    node, address = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node == str(env["KAFKA_NODE_ID"])
    assert address == f"kafka{controller_port}", "the quorum must name this node's controller"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols) == set(listeners.values()), "every listener needs a protocol"


def kafka_internal_address(services: dict[str, dict[str, Any]]) -> tuple[str, int]:
    """(host, port) that the broker advertises to other containers."""
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    plaintext = next(a for a in advertised if a.startswith("PLAINTEXT://"))
    host, port = plaintext.removeprefix("PLAINTEXT://").split(":")
    return host, int(port)


def test_kafka_urls_point_at_the_broker(services: dict[str, dict[str, Any]]) -> None:
    host, port = kafka_internal_address(services)
    assert host in services, "advertised host must be the broker's service name"
    urls = []
    for name, service in services.items():
        if "build" not in service:
            continue
        for argv in headrace_invocations(service):
            urls += [(name, m) for arg in argv for m in KAFKA_URL.findall(arg)]
    assert len(urls) >= 5, urls  # generator, trainer source + publish, two workers
    for name, (url_host, url_port, _topic) in urls:
        assert (url_host, int(url_port)) == (host, port), f"{name} talks to {url_host}:{url_port}"


def test_topics_connect_generator_joiner_trainer_and_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    def topic(argv: list[str], name: str) -> str:
        return KAFKA_URL.match(option(argv, name))[3]

    [train] = by_subcommand(services, "train").values()
    [join] = by_subcommand(services, "join").values()
    produced = {
        topic(argv, "--to")
        for name, service in services.items()
        if "build" in service
        for argv in headrace_invocations(service)
        if argv[1] in ("replay", "generate") and "--to" in argv
    }
    # The generator feeds the joiner both its inputs; the joiner feeds the trainer.
    assert produced == {topic(join, "--impressions"), topic(join, "--actions")}
    assert topic(join, "--out") == topic(train, "--source"), "nothing feeds the trainer"
    published = topic(train, "--publish")
    serve = by_subcommand(services, "serve")
    assert set(serve) == {"serving-1", "serving-2"}
    for name, argv in serve.items():
        assert topic(argv, "--params") == published, name
    joiner_urls = [train[i + 1] for i, arg in enumerate(train) if arg == "--joiner-url"]
    assert joiner_urls == [f"http://joiner:{listen_port(services['joiner'])}"]


def test_trainer_command(services: dict[str, dict[str, Any]]) -> None:
    argv = headrace_invocations(services["trainer"])[0]
    assert argv[:2] == ["headrace", "train"]
    data_dir = option(argv, "--data-dir")
    assert data_dir in mounts(services["trainer"]), "the trainer's data must live on a volume"


def test_ports_agree_with_commands_and_scrape_targets(
    services: dict[str, dict[str, Any]],
) -> None:
    jobs = scrape_targets()
    scraped = {host: port for targets in jobs.values() for host, port in targets}
    for name in ["trainer", "joiner", *by_subcommand(services, "serve")]:
        port = listen_port(services[name])
        assert scraped.get(name) == port, f"Prometheus scrapes {name} on {scraped.get(name)}"
        published = [p.split(":") for p in services[name].get("ports", [])]
        assert [c for _, c in published] == [str(port)], f"{name} publishes {published}"
    assert {h for h, _ in jobs["headrace-trainer"]} == set(by_subcommand(services, "train"))
    assert {h for h, _ in jobs["headrace-serving"]} == set(by_subcommand(services, "serve"))
    assert {h for h, _ in jobs["headrace-joiner"]} == set(by_subcommand(services, "join"))
    for host in scraped:
        assert host in services or host == "localhost", f"scrape target {host} is no service"


def test_host_ports_are_unique(services: dict[str, dict[str, Any]]) -> None:
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert host_ports, "the demo publishes ports to the host"
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_prometheus_service_loads_this_config(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    flags = dict(f.removeprefix("--").split("=", 1) for f in prometheus["command"])
    config = container_to_host(prometheus, flags["config.file"])
    assert config == PROMETHEUS_CONFIG.resolve()
    for rule_file in load_yaml(config)["rule_files"]:
        assert (config.parent / rule_file).is_file(), rule_file
    port = int(flags["web.listen-address"].rsplit(":", 1)[1])
    assert [p.split(":")[1] for p in prometheus["ports"]] == [str(port)]
    datasources = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    assert [d["url"] for d in datasources] == [f"http://prometheus:{port}"]
    assert ("localhost", port) in scrape_targets()["prometheus"]


def test_grafana_provisioning_and_dashboards_are_mounted(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    provisioning = container_to_host(grafana, "/etc/grafana/provisioning")
    assert provisioning == (GRAFANA / "provisioning").resolve()
    assert list((provisioning / "datasources").glob("*.yml"))
    providers = load_yaml(provisioning / "dashboards/headrace.yml")["providers"]
    for provider in providers:
        folder = container_to_host(grafana, provider["options"]["path"])
        assert folder.is_dir() and list(folder.glob("*.json")), f"no dashboards in {folder}"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert container_to_host(grafana, home).is_file(), home


def test_mounted_files_and_named_volumes_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source in mounts(service).values():
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_headrace_services_build_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    built = [name for name, s in services.items() if "build" in s]
    assert set(built) >= {"generator", "trainer", "serving-1", "serving-2"}
    for name in built:
        build = services[name]["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name}: the context must be the repository root"
        assert (context / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_installs_every_package() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copied = set()
    for verb, args in instructions:
        if verb == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                copied.add(source.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= copied, f"not copied into the image: {package_dirs - copied}"
    assert {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]} <= copied
    installs = [args for verb, args in instructions if verb == "RUN" and "pip install" in args]
    assert len(installs) == 1
    argv = shlex.split(installs[0].split("&&")[0])
    assert option(argv, "-c") == "constraints.txt"
    assert option(argv, "--extra-index-url") == "https://download.pytorch.org/whl/cpu"
    assert argv[-1] == "."
    assert ("ENTRYPOINT", '["headrace"]') in instructions


def cli_commands() -> dict[str, set[str]]:
    """Subcommand -> its option names, from the real CLI."""
    import typer.main

    from headrace.cli import app

    group = typer.main.get_command(app)
    return {
        name: {opt for param in command.params for opt in param.opts}
        for name, command in group.commands.items()  # type: ignore[attr-defined]
    }


def compose_invocations() -> list[tuple[str, list[str]]]:
    services = load_yaml(COMPOSE_FILE)["services"]
    return [
        (name, argv)
        for name, service in services.items()
        if "build" in service
        for argv in headrace_invocations(service)
    ]


@pytest.mark.parametrize(
    ("service", "argv"), compose_invocations(), ids=lambda v: v if isinstance(v, str) else v[1]
)
def test_compose_commands_match_the_cli(service: str, argv: list[str]) -> None:
    commands = cli_commands()
    sub = argv[1]
    if sub not in commands:
        # train and serve arrive with issues 4 and 5; once merged this checks them.
        pytest.skip(f"`headrace {sub}` is not on this branch yet")
    used = {arg.split("=")[0] for arg in argv[2:] if arg.startswith("--")}
    assert used <= commands[sub], f"{service}: unknown options {used - commands[sub]}"
