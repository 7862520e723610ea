# Build the wheel (Rust extension + Python package) with maturin, run it on a slim Python image.
# Debian's rustc is older than pyo3 needs, so the build stage starts from the Rust image.
FROM rust:1-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir maturin
ENV PATH=/opt/maturin/bin:$PATH
WORKDIR /src
COPY pyproject.toml Cargo.toml Cargo.lock ./
COPY rust ./rust
COPY python ./python
RUN maturin build --release --out /wheels

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/connreg connreg \
    && mkdir -p /var/lib/connreg && chown connreg /var/lib/connreg
USER connreg
VOLUME /var/lib/connreg
EXPOSE 5000
ENV CONNREG_DATA_DIR=/var/lib/connreg CONNREG_LISTEN=0.0.0.0:5000
ENTRYPOINT ["connreg"]
CMD ["serve"]
