# driftgate service image
#
# Two stages: the builder has a C compiler and builds the project wheel, with the
# optional C fast path monitor.ingest._fastdecode (setup.py,
# monitor/ingest/_native/*.c, third_party/yyjson); the
# runtime stage installs that wheel and its dependencies into the slim image, so
# no compiler ends up in the image. The extension is optional for source installs
# (a failed compile only falls back to the msgspec path), so the builder checks
# that it is really in the wheel and fails the build otherwise.
# Both stages use the same Python release and Debian base (glibc) so the wheel's
# extension runs in the runtime image. tests/integration/test_packaging.py builds the wheel
# from what the builder COPYs, as here.

FROM python:3.11-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY detectors ./detectors
COPY monitor ./monitor
COPY rollback ./rollback
COPY third_party ./third_party
# optional=True in setup.py: a failed compile would only warn, so check the
# wheel holds the extension and that it imports (-P: not the source tree in .)
RUN pip wheel --no-deps -w /wheels . \
    && python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/driftgate-*.whl')[0]).namelist(); \
sys.exit(0 if any(n.startswith('monitor/ingest/_fastdecode') and n.endswith('.so') for n in names) \
else 'the wheel has no monitor/ingest/_fastdecode extension: its C build failed')" \
    && pip install --no-deps --target /tmp/check /wheels/driftgate-*.whl \
    && PYTHONPATH=/tmp/check python -P -c "import monitor.ingest._fastdecode"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /wheels /tmp/wheels
RUN pip install /tmp/wheels/driftgate-*.whl && rm -rf /tmp/wheels \
    && python -c "import monitor.ingest._fastdecode" \
    && useradd --system --uid 10001 driftgate && mkdir -p /var/lib/driftgate \
    && chown driftgate /var/lib/driftgate
WORKDIR /app
USER 10001
EXPOSE 8080
ENTRYPOINT ["driftgate"]
CMD ["run", "--config", "/etc/driftgate/driftgate.yaml"]
