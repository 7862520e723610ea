# connreg's container image: Debian bookworm's Python 3.11 and the libraries it links, unpacked
# from Debian packages (no shell, no package manager), with the maturin-built wheel and its
# dependencies on top. Runs as uid 10001, data on the /var/lib/connreg volume, port 5000.
#
# With internet (docker or podman; everything is built from source here):
#   docker build -t connreg .
#   podman build --format docker --build-arg BASE=rootfs --build-arg APP=app-from-source -t connreg .
# (--format docker keeps the HEALTHCHECK; podman/buildah 1.28 builds a stage named by a build
# argument only when the argument is given on the command line, not by its default.)
#
# Without a reachable container registry (`make image`, image/build.sh): the same two scripts
# run on the build machine, the base comes in with `podman import`, and the two build arguments
# below point this file at them. Either way the base is image/rootfs.sh's tree and the
# application is image/install-app.sh's, so the two paths cannot drift.
#
# BASE: an image holding image/rootfs.sh's tree; the default builds it in this file.
ARG BASE=rootfs
# APP: where image/install-app.sh's tree comes from: `app-from-source` (build the wheel here) or
# `app-from-context` (APP_TREE in the build context, made by image/build.sh).
ARG APP=app-from-source

# --- base: Debian packages unpacked (no emulator needed: it runs on the build platform) --------
FROM --platform=$BUILDPLATFORM debian:bookworm-slim AS rootfs-build
ARG TARGETARCH
# python3: bookworm's 3.11, to precompile the standard library (compileall -j needs more than
# python3-minimal has).
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY image/rootfs.sh /usr/local/bin/
RUN rootfs.sh /rootfs "${TARGETARCH:-amd64}"

FROM scratch AS rootfs
COPY --from=rootfs-build /rootfs /

# --- application: the wheel (maturin) and its dependencies --------------------------------
# Debian's rustc is older than pyo3 needs, so this stage starts from the Rust image.
FROM rust:1-slim-bookworm AS app-build
ARG TARGETARCH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv binutils \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir maturin
WORKDIR /src
COPY pyproject.toml Cargo.toml Cargo.lock ./
COPY rust ./rust
COPY python ./python
COPY image/install-app.sh /usr/local/bin/
RUN /opt/maturin/bin/maturin build --release --out /wheels \
    && PYTHON=/opt/maturin/bin/python install-app.sh /wheels/*.whl /app "${TARGETARCH:-amd64}"

FROM scratch AS app-from-source
COPY --from=app-build /app /

FROM scratch AS app-from-context
ARG APP_TREE=build/image/app-amd64
COPY ${APP_TREE} /

# --- the image -------------------------------------------------------------------------------
# (an alias: COPY --from takes no build argument. The no-op LABEL makes it an image of its own,
# which buildah's --layers=false clean-up needs: it removes each stage's image once.)
FROM ${APP} AS app
LABEL connreg.stage=app

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="connreg" \
      org.opencontainers.image.description="Connected OCI registry: an edge registry that syncs with a parent registry" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="debian:bookworm (packages unpacked by image/rootfs.sh)"
COPY --from=app /usr/local /usr/local
COPY --from=app --chown=10001:10001 /var/lib/connreg /var/lib/connreg
# Settings come from the environment (CONNREG_<SETTING>, README "Configuration").
ENV PATH=/usr/local/bin:/usr/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    CONNREG_DATA_DIR=/var/lib/connreg \
    CONNREG_LISTEN=0.0.0.0:5000
USER 10001:10001
WORKDIR /var/lib/connreg
VOLUME /var/lib/connreg
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python3", "-m", "connreg.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["connreg"]
CMD ["serve"]
