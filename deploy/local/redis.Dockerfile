# A stand-in for redis:7 where no registry is reachable: Debian's redis-server (7.0) with the
# parts of the redis image that docker-compose.yml uses: redis-server and redis-cli on PATH, the
# user redis, /data. Built by the compose test:
#   docker build -f deploy/local/redis.Dockerfile --build-arg BASE_IMAGE=... -t cai-local/redis .
ARG BASE_IMAGE=cai-local/bookworm-python:3.11
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
CMD ["redis-server"]
