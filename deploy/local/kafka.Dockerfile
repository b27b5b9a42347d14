# A stand-in for apache/kafka:3.9.1 where no registry is reachable: the same Kafka release from
# Maven Central jars (as `cai setup` fetches them for the local stack) on a Debian base, with the
# parts of the apache/kafka image that docker-compose.yml uses: KAFKA_* variables turned into
# server.properties, CLUSTER_ID, /var/lib/kafka/data, /opt/kafka/bin/kafka-broker-api-versions.sh
# and the non-root user appuser. Built by the compose test:
#   docker build -f deploy/local/kafka.Dockerfile --build-arg BASE_IMAGE=... -t cai-local/kafka .
ARG BASE_IMAGE=cai-local/bookworm-python:3.11
FROM ${BASE_IMAGE} AS jars
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless maven ca-certificates-java \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/cai/
RUN if ls /usr/local/share/ca-certificates/cai/*.crt >/dev/null 2>&1; then update-ca-certificates; fi
COPY stack/kafka/pom.xml /build/pom.xml
RUN mvn -q -B -f /build/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory=/opt/kafka/libs

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --user-group --home-dir /home/appuser --create-home appuser \
 && mkdir -p /var/lib/kafka/data /opt/kafka/config \
 && chown appuser:appuser /var/lib/kafka/data /opt/kafka/config
COPY --from=jars /opt/kafka/libs /opt/kafka/libs
COPY stack/kafka/log4j.properties /opt/kafka/config/log4j.properties
COPY deploy/local/kafka-run /etc/kafka/docker/run
COPY deploy/local/kafka-broker-api-versions.sh /opt/kafka/bin/kafka-broker-api-versions.sh
USER appuser
CMD ["/etc/kafka/docker/run"]
