"""Java and the Apache Kafka jars: find a Java 17+, and resolve the broker's classpath once.

The jars come from Maven Central through Maven itself (``kafka-broker.pom.xml`` beside
this file pins the release) and are copied once into a cache outside the repository,
``~/.cache/es-orders/kafka-<version>/lib`` (``ES_ORDERS_CACHE_DIR`` or
``XDG_CACHE_HOME`` move it). From then on the broker starts offline. A cache is complete
when its marker holds the hash of the pom that filled it, so editing the pom refills it,
and a copy interrupted halfway is never mistaken for a complete one.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from es_orders.errors import BrokerError

_log = logging.getLogger(__name__)

POM = Path(__file__).with_name("kafka-broker.pom.xml")
MIN_JAVA = 17
_MARKER = "complete"
_MAVEN_TIMEOUT = 600.0


class JavaNotFoundError(BrokerError):
    """No Java 17 or newer to run Apache Kafka with."""


class KafkaJarsError(BrokerError):
    """The Apache Kafka jars are not cached and Maven cannot fetch them."""


@dataclass(frozen=True, slots=True)
class KafkaRuntime:
    java: str  # the java executable
    java_version: int
    kafka_version: str
    classpath: str  # "<cache>/lib/*": the JVM expands the wildcard


def kafka_version() -> str:
    """The Apache Kafka release the pom pins."""
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().find("m:properties/m:kafka.version", namespace)
    if version is None or not version.text:
        raise KafkaJarsError(f"{POM} names no kafka.version")
    return version.text.strip()


def cache_dir() -> Path:
    """Where the jars of each Kafka release are kept, one folder per release."""
    if explicit := os.environ.get("ES_ORDERS_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "es-orders"


def find_java() -> tuple[str, int]:
    """The java executable (``JAVA_HOME`` first, then ``PATH``) and its major version."""
    candidates = []
    if java_home := os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(java_home) / "bin" / "java"))
    if on_path := shutil.which("java"):
        candidates.append(on_path)
    if not candidates:
        raise JavaNotFoundError("no Java found (neither JAVA_HOME nor java on PATH)")
    seen = []
    for java in candidates:
        try:
            shown = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30, check=False
            ).stderr
        except OSError:
            continue
        version = _java_major(shown)
        if version is not None and version >= MIN_JAVA:
            return java, version
        seen.append(f"{java} is Java {version}")
    raise JavaNotFoundError(f"Apache Kafka 4 needs Java {MIN_JAVA}+, and {', '.join(seen)}")


def _java_major(version_output: str) -> int | None:
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if found is None:
        return None
    major = int(found.group(1))
    # Java 8 and older call themselves "1.8".
    return int(found.group(2) or 0) if major == 1 else major


def _pom_hash() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def cached_classpath() -> Path | None:
    """The cached jar folder for the pinned release, if it is complete."""
    lib = cache_dir() / f"kafka-{kafka_version()}" / "lib"
    marker = lib.parent / _MARKER
    try:
        complete = marker.read_text().strip() == _pom_hash()
    except OSError:
        return None
    return lib if complete else None


def resolve_classpath() -> Path:
    """The jar folder of the pinned release: from the cache, or fetched once with Maven.

    Two processes resolving at once take turns (a lock file), so neither sees half a copy.
    """
    if (lib := cached_classpath()) is not None:
        return lib
    release = cache_dir() / f"kafka-{kafka_version()}"
    release.mkdir(parents=True, exist_ok=True)
    with (release / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib := cached_classpath()) is not None:
            return lib
        return _fetch(release)


def _fetch(release: Path) -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaJarsError(
            f"the Apache Kafka {kafka_version()} jars are not cached in {release} and Maven "
            "(mvn) is not installed to fetch them"
        )
    staging = release / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        mvn,
        "--batch-mode",
        "--quiet",
        "--no-transfer-progress",
        "-Dstyle.color=never",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    _log.info("fetching Apache Kafka %s jars with Maven into %s", kafka_version(), release)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaJarsError(f"Maven could not fetch the Apache Kafka jars: {exc}") from exc
    jars = sorted(staging.glob("*.jar")) if staging.is_dir() else []
    if done.returncode != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise KafkaJarsError(
            f"Maven could not fetch the Apache Kafka {kafka_version()} jars "
            f"(exit code {done.returncode}):\n{output}"
        )
    lib = release / "lib"
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    (release / _MARKER).write_text(_pom_hash())
    _log.info("cached Apache Kafka %s: %d jars in %s", kafka_version(), len(jars), lib)
    return lib


def kafka_runtime() -> KafkaRuntime:
    """Java 17+ and the jars, or a ``BrokerError`` that says which is missing."""
    java, java_version = find_java()
    lib = resolve_classpath()
    return KafkaRuntime(java, java_version, kafka_version(), f"{lib}{os.sep}*")
