# Sandtrail: one image for every part (scheduler, indexer + web UI, agent); the role is
# picked by the command (see docker-compose.yml).
#
# Two ways to build it:
#   docker build -t sandtrail .
#       builds the binary from source in a Rust builder stage (needs to pull rust:1-bookworm
#       and debian:bookworm-slim).
#   cargo build --bin sandtrail && mkdir -p target/docker \
#     && strip -o target/docker/sandtrail target/debug/sandtrail \
#     && docker build --target prebuilt -t sandtrail .
#       copies a binary built on this machine (glibc of Debian bookworm or older); only
#       debian:bookworm-slim is needed, and `scripts/base-image.sh` makes that one locally
#       with debootstrap where nothing can be pulled. tests/compose/run.sh does this.
#
# The prebuilt stage comes before the builder stage on purpose: `--target prebuilt`
# stops there, so even the classic builder never touches the rust image.

FROM debian:bookworm-slim AS base
# curl is the healthcheck client. The locally debootstrapped base already has it, which
# keeps that path free of network access during `docker build`.
RUN if ! command -v curl >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends curl ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /var/lib/sandtrail
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV SANDTRAIL_DATA_DIR=/var/lib/sandtrail
WORKDIR /var/lib/sandtrail
ENTRYPOINT ["sh", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["up", "--listen", "0.0.0.0:7070", "--router-listen", "0.0.0.0:7080"]
EXPOSE 7070 7071 7072 7080

FROM base AS prebuilt
# The classic builder builds every stage before the last, this one too, also when no
# binary was put in target/docker/: the glob (plus a file that always exists) keeps the
# COPY from failing then, and an image built `--target prebuilt` without a binary gets a
# `sandtrail` that says so and exits 1, rather than failing the default build.
COPY Cargo.toml target/docker/sandtrai[l] /usr/local/bin/
RUN rm /usr/local/bin/Cargo.toml \
    && if [ ! -f /usr/local/bin/sandtrail ]; then \
      printf '#!/bin/sh\necho "this image has no sandtrail binary: put one in target/docker/sandtrail before docker build --target prebuilt" >&2\nexit 1\n' \
        > /usr/local/bin/sandtrail && chmod +x /usr/local/bin/sandtrail; \
    fi

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sandtrail \
    && cp target/release/sandtrail /usr/local/bin/sandtrail \
    && strip /usr/local/bin/sandtrail

FROM base AS runtime
COPY --from=builder /usr/local/bin/sandtrail /usr/local/bin/sandtrail
