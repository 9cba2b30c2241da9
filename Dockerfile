# syntax=docker/dockerfile:1
# driftwatch: a small runtime image (Debian slim, non-root, health-checked)
# built in a Rust stage.

FROM rust:1.94-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin driftwatch \
 && strip target/release/driftwatch

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/driftwatch --create-home driftwatch
COPY --from=build /src/target/release/driftwatch /usr/local/bin/driftwatch
COPY rules /etc/driftwatch/rules
USER 10001
WORKDIR /var/lib/driftwatch
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9464/healthz || exit 1
ENTRYPOINT ["driftwatch"]
CMD ["run", "--config", "/etc/driftwatch/driftwatch.yaml"]
