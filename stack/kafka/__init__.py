"""Local Apache Kafka (KRaft combined mode) from Maven Central jars: fetch, configure, start."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from core.settings import KAFKA_VERSION, StackSettings
from stack.processes import ServiceError

HERE = Path(__file__).parent


def libs_dir(settings: StackSettings) -> Path:
    return settings.kafka_home / "libs"


def jars_ready(settings: StackSettings) -> bool:
    return (libs_dir(settings) / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()


def fetch_jars(settings: StackSettings) -> None:
    """Copy the broker and its runtime dependencies from Maven Central (idempotent)."""
    if jars_ready(settings):
        return
    if shutil.which("mvn") is None:
        raise ServiceError("kafka: Maven (mvn) is not installed. Fix: apt-get install -y maven")
    settings.kafka_home.mkdir(parents=True, exist_ok=True)
    tmp = settings.kafka_home / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(
            f"kafka: fetching jars from Maven Central failed:\n{result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}\nFix: check that Maven Central is reachable, then rerun "
            "`cai setup`."
        )
    tmp.rename(libs_dir(settings))


def server_properties(settings: StackSettings, data_dir: Path) -> str:
    host = settings.host
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{settings.kafka_controller_port}",
        (f"listeners=PLAINTEXT://{host}:{settings.kafka_port},"
         f"CONTROLLER://{host}:{settings.kafka_controller_port}"),
        f"advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data_dir.resolve()}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        # The pipeline sends whole prompts; allow up to 16 MB so big records reach the DLQ.
        "message.max.bytes=16777216",
        "replica.fetch.max.bytes=16777216",
        "log.retention.hours=-1",
        "",
    ])


def prepare(settings: StackSettings) -> tuple[list[str], Path]:
    """Write server.properties, format storage on first start; return (argv, log file)."""
    fetch_jars(settings)
    java = shutil.which("java")
    if java is None:
        raise ServiceError("kafka: Java is not installed. Fix: apt-get install -y openjdk-17-jre")
    home = (settings.state_dir / "kafka").resolve()
    data_dir = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(server_properties(settings, data_dir))
    classpath = f"{libs_dir(settings).resolve()}/*"
    log4j = f"-Dlog4j.configuration=file:{HERE / 'log4j.properties'}"
    if not (data_dir / "meta.properties").exists():
        result = subprocess.run(
            [java, log4j, "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", _kafka_uuid(), "-c", str(props)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"kafka: formatting storage in {data_dir} failed:\n{result.stdout}{result.stderr}"
                f"\nFix: remove {data_dir} and run `cai stack up` again."
            )
    argv = [java, *jvm_options(settings), log4j, "-cp", classpath, "kafka.Kafka", str(props)]
    return argv, settings.logs_dir / "kafka.log"


def jvm_options(settings: StackSettings) -> list[str]:
    """The broker's JVM flags: a fixed heap of ``kafka_heap`` (env ``CAI_KAFKA_HEAP``).

    With a smaller -Xms the heap grows towards -Xmx as the broker runs, and even a fixed heap
    enters the process's RSS page by page as the collector first uses it; both read as a slow
    leak in a soak. -Xms equal to -Xmx and every page touched at start (AlwaysPreTouch) make the
    RSS flat from the start, so what still grows is worth a look.
    """
    heap = settings.kafka_heap
    return [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+AlwaysPreTouch", "-XX:+UseG1GC",
            "-Djava.awt.headless=true"]


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars)."""
    # An id starting with '-' would be read as an option by StorageTool's argument parser.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
