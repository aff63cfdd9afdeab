# syntax=docker/dockerfile:1
# chatetl: a stripped release binary on a slim Debian. Configuration and job files are mounted
# at run time (see docker-compose.yml), not baked into the image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io downloads and the build directory between image builds, so a
# change to chatetl's own code rebuilds chatetl alone, not its ~400 dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/chatetl /usr/local/bin/chatetl

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/chatetl /usr/local/bin/chatetl
# Mount the configuration read-only in /etc/chatetl; data (a Parquet warehouse) goes to
# /var/lib/chatetl.
RUN mkdir -p /etc/chatetl /var/lib/chatetl && chown nobody /var/lib/chatetl
ENV CHATETL_CONFIG=/etc/chatetl/chatetl.yaml \
    CHATETL_WAREHOUSE_PATH=/var/lib/chatetl/warehouse
WORKDIR /var/lib/chatetl
USER nobody
# tini is PID 1: it passes SIGTERM to chatetl (which commits the windows in flight and exits 0)
# and reaps children; chatetl itself is never run through a shell.
ENTRYPOINT ["/usr/bin/tini", "--", "chatetl"]
CMD ["--help"]
