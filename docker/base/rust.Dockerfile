# Stand-in for the official rust image: gcc and libc headers from Debian, and this machine's own
# Rust toolchain (the build context, sent by docker/build-base-images) in place of rustup's.
# local-ca/ holds the certificate authorities this machine added to its own trust store
# (/usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's), often none, so that cargo
# reaches crates.io from inside a build exactly as it does on the machine.
ARG BASE=stickyws-local/debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY local-ca /usr/local/share/ca-certificates
RUN update-ca-certificates >/dev/null
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
