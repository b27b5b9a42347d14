# The project's image: worker, trainer, feed, monitor and Triton (the `tritonserver` binary of the
# nvidia-pytriton wheel with its python backend, the same server as `cai stack up` runs locally).
# The base is a build argument: any Debian-based image with Python 3.11 (python3 -m venv and the
# shared libpython). docker-compose.yml passes CAI_BASE_IMAGE; the compose test passes a base
# built from Debian's packages (deploy/local/build-base) because no registry is reachable there.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# Where torch comes from: the CPU wheels by default (small image); set it empty for PyPI's build
# (CUDA included, the GPU path) or to another PyTorch index (e.g. .../whl/cu124).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
 && python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --home-dir /home/cai --create-home cai
# Extra CA certificates for the build, e.g. of a TLS-intercepting proxy in front of PyPI: put
# PEM files named *.crt into deploy/ca-certificates/ (git ignores them); none are needed otherwise.
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/cai/
RUN if ls /usr/local/share/ca-certificates/cai/*.crt >/dev/null 2>&1; then update-ca-certificates; fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
COPY deploy/no-deps.txt deploy/
# pip first: a base's own pip can be old (Debian's 23.0), and its resolver backtracked for most
# of an hour over these dependencies, which a current pip resolves at once.
RUN pip install --upgrade "pip>=25" \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps -r deploy/no-deps.txt \
 && rm /tmp/requirements.txt
COPY README.md ./
# Every package of the distribution, lowest floor first (tests/test_layers.py).
COPY core ./core
COPY streams ./streams
COPY serving ./serving
COPY scoring ./scoring
COPY agents ./agents
COPY trainer ./trainer
COPY stack ./stack
COPY benchmarks ./benchmarks
COPY cai ./cai
RUN pip install --no-deps . \
 && mkdir -p /state /cache && chown cai:cai /state /cache
ENV CAI_STATE_DIR=/state CAI_CACHE_DIR=/cache HOME=/home/cai OMP_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false
# Not root: the named volumes /state and /cache start out owned by this user.
USER cai
ENTRYPOINT ["cai"]
CMD ["--help"]
