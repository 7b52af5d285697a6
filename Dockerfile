# driftgate service image
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY detectors ./detectors
COPY monitor ./monitor
COPY rollback ./rollback
RUN pip install . && useradd --system --uid 10001 driftgate && mkdir -p /var/lib/driftgate \
    && chown driftgate /var/lib/driftgate
USER 10001
EXPOSE 8080
ENTRYPOINT ["driftgate"]
CMD ["run", "--config", "/etc/driftgate/driftgate.yaml"]
