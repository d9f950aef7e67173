# One image for every IOC service (api, ingest, migrations, simulator); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ioc ioc
COPY ingest ingest
COPY analytics analytics
COPY storage storage
COPY dashboards dashboards
COPY simulators simulators
RUN pip install --no-cache-dir . && mkdir /data && chown nobody /data
USER nobody
ENTRYPOINT ["ioc"]
