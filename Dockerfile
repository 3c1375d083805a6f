# syntax=docker/dockerfile:1
# Spillway's image: build wheels in one stage, install them into a slim runtime
# that runs as a non-root user. The config is read from $SPILLWAY_CONFIG; mount
# yours over /etc/spillway (the Helm chart mounts a ConfigMap there).
#
#   docker build -t spillway:0.1.0 .
#   docker run --rm -p 8080:8080 spillway:0.1.0
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
COPY router ./router
# the project and every dependency as wheels, so the runtime stage needs no compiler
RUN pip wheel --wheel-dir /wheels ".[otel]"

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPILLWAY_CONFIG=/etc/spillway/spillway.yaml
RUN groupadd --system --gid 10001 spillway \
    && useradd --system --uid 10001 --gid spillway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin spillway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels \
       "$(ls /wheels/spillway-*.whl)[otel]" \
    && rm -rf /wheels
# the demo config; replace it by mounting a directory at /etc/spillway
COPY config/spillway.yaml /etc/spillway/spillway.yaml
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["spillway"]
CMD ["serve", "--host", "0.0.0.0"]
