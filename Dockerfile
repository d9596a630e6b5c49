# hotdog served by TorchServe: hotdog.mar (the ExecuTorch int8 program behind handlers/hotdog_handler.py), CPU only.
#   docker build -t hotdog .
#   docker run -d --name hotdog -p 8080:8080 -p 7070:7070 -p 8082:8082 -v hotdog-keys:/var/lib/hotdog hotdog
#   docker exec hotdog cat /var/lib/hotdog/key_file.json     # the token keys (never in the image)
# `make image` builds this file with buildah on a debian:bookworm-slim made from Debian packages; docs/deploy.md.
FROM debian:bookworm-slim AS base
# Python 3.11 and Java 17 (TorchServe's frontend) from Debian; tini passes signals to TorchServe's process group
# (-s: and reaps orphans where it is not PID 1).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv openjdk-17-jre-headless tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/hotdog --create-home --shell /usr/sbin/nologin hotdog

# The serving packages' pins from pyproject.toml, alone in a file: a change elsewhere in pyproject.toml does not
# rebuild the stack's layer below.
FROM base AS pins
COPY pyproject.toml deploy/cpu_requirements.py /pins/
RUN python3 /pins/cpu_requirements.py pins /pins/pyproject.toml > /pins/serving.txt

FROM base
# The pinned serving stack without the GPU-only packages (deploy/cpu_requirements.py). PIP_* build args are for
# builds behind a TLS proxy or with a local wheel index (make image passes this machine's).
ARG PIP_CERT=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/hotdog
COPY --from=pins /pins/serving.txt deploy/
COPY deploy/cpu_requirements.py deploy/
RUN python3 -m venv /opt/venv && python deploy/cpu_requirements.py install deploy/serving.txt

# The shipped artifacts and the code that packs and serves them; hotdog.mar is built here, so a stale .pte
# fails the build with make mar's one-line hash error.
COPY model_src/ model_src/
COPY training/ training/
COPY mobile_export/*.py mobile_export/
COPY serving/ serving/
COPY handlers/ handlers/
COPY serve_config/ serve_config/
COPY weights/ weights/
COPY exported/ exported/
COPY deploy/ deploy/
# The web page's proxy (web/proxy.py): the Kubernetes sidecar that holds its pod's key (deploy/kubernetes/).
COPY web/ web/
RUN python -m serving.archive --weights weights && python -m deploy.container_config

# Token keys: TorchServe writes key_file.json into its working directory, this volume (deploy/entrypoint.sh).
ENV HOTDOG_KEYS=/var/lib/hotdog
VOLUME /var/lib/hotdog
WORKDIR /var/lib/hotdog
USER hotdog
EXPOSE 8080 7070 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s CMD ["python", "/opt/hotdog/deploy/healthcheck.py"]
ENTRYPOINT ["tini", "-s", "-g", "--", "/opt/hotdog/deploy/entrypoint.sh"]
