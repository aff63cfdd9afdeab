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
WORKDIR /etc/chatetl
USER nobody
ENTRYPOINT ["chatetl"]
CMD ["--help"]
