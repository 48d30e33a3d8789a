# One image for every Herald service; the command picks the service:
#   uvicorn --factory services.<name>.app:create_app --host 0.0.0.0 --port <port> --log-config deploy/logging.yaml
# and `python -m herald.cli migrate` / `topics` for the one-shot set-up job.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The runtime lock: the same pins as requirements.lock, without the test tools.
COPY requirements.runtime.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -q -r /tmp/requirements.lock

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app herald
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root herald ./herald
COPY --chown=root:root shared ./shared
COPY --chown=root:root services ./services
COPY --chown=root:root sandbox ./sandbox
COPY --chown=root:root deploy/logging.yaml ./deploy/logging.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HERALD_HOST=0.0.0.0 \
    HERALD_LOG_JSON=true
USER 10001
EXPOSE 8101 8102 8103 8104 8105 8106
CMD ["uvicorn", "--factory", "services.ingress.app:create_app", "--host", "0.0.0.0", "--port", "8101", "--no-access-log", "--log-config", "deploy/logging.yaml"]
