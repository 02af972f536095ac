# syntax=docker/dockerfile:1
#
# watchdog, the etcd/APISIX operations agent, as a small non-root image.
#
#   docker build -t apisix-etcd-watchdog:0.1.0 .
#   docker run --rm -p 9817:9817 -v $PWD/watchdog.yml:/etc/watchdog/watchdog.yml:ro \
#       apisix-etcd-watchdog:0.1.0
#
# The base is pinned to an exact tag; release builds pin its digest too:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
# Only the package and its runtime dependencies are installed: no tests, no `lab` extra
# (no etcd binary, no trustme).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Wheels for every runtime dependency first, in a layer of their own: a change to the
# package's code rebuilds only the package's wheel. The final stage installs them offline.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
 && pip wheel --wheel-dir /wheels -r requirements.txt
COPY README.md ./
COPY watchdog ./watchdog
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    WATCHDOG_HEALTHCHECK_URL=http://127.0.0.1:9817/healthz
# A fixed, unprivileged UID/GID, matched by runAsUser/fsGroup in deploy/kubernetes.
RUN groupadd --system --gid 10001 watchdog \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/watchdog --no-create-home \
        --shell /usr/sbin/nologin watchdog \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/watchdog \
 && install -d -m 0755 /etc/watchdog
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels apisix-etcd-watchdog \
 && watchdog --version
USER 10001:10001
WORKDIR /var/lib/watchdog
VOLUME ["/var/lib/watchdog"]
EXPOSE 9817
# No curl in slim: Python asks /healthz (which never needs credentials). With TLS on, set
# WATCHDOG_HEALTHCHECK_URL=https://127.0.0.1:9817/healthz (the certificate is not checked:
# this only asks whether the process answers).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\ntry:\n    with urllib.request.urlopen(os.environ['WATCHDOG_HEALTHCHECK_URL'], timeout=4, context=ctx) as r:\n        sys.exit(0 if r.status == 200 else 1)\nexcept Exception as e:\n    print(e)\n    sys.exit(1)\n"]
ENTRYPOINT ["watchdog"]
CMD ["run", "--config", "/etc/watchdog/watchdog.yml"]
