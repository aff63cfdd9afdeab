# chatetl: build the release binary, ship it with the job catalogue on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/chatetl /usr/local/bin/chatetl

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/chatetl /usr/local/bin/chatetl
COPY chatetl.yaml /etc/chatetl/chatetl.yaml
COPY jobs /etc/chatetl/jobs
COPY deploy /etc/chatetl/deploy
# Configuration is read-only in /etc/chatetl; data (a Parquet warehouse) goes to /var/lib/chatetl.
RUN mkdir -p /var/lib/chatetl && chown nobody /var/lib/chatetl
ENV CHATETL_CONFIG=/etc/chatetl/chatetl.yaml \
    CHATETL_WAREHOUSE_PATH=/var/lib/chatetl/warehouse
WORKDIR /var/lib/chatetl
USER nobody
ENTRYPOINT ["chatetl"]
CMD ["--help"]
