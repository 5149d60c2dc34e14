# The SARK container image (docs/operations.md, "The container image").
#
#   docker build -t ghcr.io/sark-project/sark:0.1.0 .      (or: podman build ...)
#
# Stages:
#   build         compiles `sark` from this directory on the official Rust image
#                 (RUST_VERSION, at or above the workspace's rust-version)
#   runtime-base  Debian 12 slim with only the binary's shared libraries, CA certificates
#                 and an unprivileged user
#   prebuilt      runtime-base around a binary built elsewhere, for machines that cannot
#                 pull the Rust image: `--target prebuilt` with a build context that holds
#                 only that binary, named `sark` and stripped like the `build` stage's
#                 (scripts/image does this); the `build` stage is then skipped
#   runtime       runtime-base around the binary of `build`: the default, last stage
#
# At run time the image needs no shell: the entry point is the binary itself, and the
# node runs as uid/gid 10001 on a read-only root filesystem with /var/lib/sark writable.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# samael's build runs bindgen over the xmlsec headers and links libxmlsec1, libxml2 and
# OpenSSL (the same list as scripts/install-deps).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libclang-dev libssl-dev libxml2-dev libxmlsec1-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts: a source change rebuilds the
# workspace's crates, not every dependency. The binary leaves the cache mount without its
# debug sections (four fifths of its size; the symbols stay, so backtraces name functions).
RUN --mount=type=cache,id=sark-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=sark-target,target=/src/target \
    cargo build --release --locked -p sark \
 && mkdir /out \
 && objcopy --strip-debug target/release/sark /out/sark

FROM docker.io/library/debian:bookworm-slim AS runtime-base
LABEL org.opencontainers.image.title="sark" \
      org.opencontainers.image.description="SARK authentication and authorization service" \
      org.opencontainers.image.licenses="Apache-2.0"
# The binary's shared libraries (`ldd sark`, mapped to their packages): xmlsec with its
# OpenSSL backend for SAML signatures, libxml2, OpenSSL; the C library and libgcc come
# with the base. ca-certificates for TLS to identity providers, SIEM sinks and databases.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libxml2 libxmlsec1 libxmlsec1-openssl \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 sark \
 && useradd --uid 10001 --gid sark --home-dir /var/lib/sark --no-create-home \
      --shell /usr/sbin/nologin sark \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/sark
# Inside a container the node listens on every interface (the default is loopback only).
# The data directory holds the embedded SQLite database, the generated secrets key and the
# bootstrap admin's password file when no database or key is configured.
ENV SARK_DATA_DIR=/var/lib/sark \
    SARK_HTTP__BIND=0.0.0.0:8080
# 8080: the API and the probes. 7400: the cluster port, once SARK_CLUSTER__BIND or seeds
# are set. 9090: the management listener (health and metrics), once
# SARK_HTTP__MANAGEMENT_BIND=0.0.0.0:9090 is set.
EXPOSE 8080 7400 9090
VOLUME ["/var/lib/sark"]
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/sark"]
CMD ["serve"]

FROM runtime-base AS prebuilt
COPY sark /usr/local/bin/sark

FROM runtime-base AS runtime
COPY --from=build /out/sark /usr/local/bin/sark
