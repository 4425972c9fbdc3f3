# The stickyws image: one replica, `stickyws serve`, configured from the environment (README,
# "Configuration"). A Rust toolchain builds the binaries; a slim Debian runs them as a non-root
# user. The page's template, JS and CSS are compiled into `stickyws`, so it is all a replica
# needs; `stickyws-load` lies beside it because `stickyws load` runs it from its own folder.
#
# The base images are build arguments so that a machine without a registry builds this same file
# from local stand-ins (docker/build-base-images, docker/compose.local.yml).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# Dependencies first, in a layer of their own, built against placeholder sources of both
# workspace members (the gateway at the top, the load tool in load/): a change under src/ or
# load/src/ then rebuilds only the workspace's own crates. The placeholders' outputs are deleted
# again so that cargo cannot take them for the real crates, whatever the files' timestamps.
COPY Cargo.toml Cargo.lock ./
COPY load/Cargo.toml load/
RUN mkdir src load/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > load/src/main.rs \
 && touch load/src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src load/src target/release/stickyws* \
      target/release/deps/stickyws-* target/release/deps/libstickyws-* \
      target/release/deps/stickyws_load-* target/release/deps/libstickyws_load-* \
      target/release/.fingerprint/stickyws-*
COPY askama.toml ./
COPY static static
COPY src src
COPY load/src load/src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/stickyws /out/stickyws \
 && install -D -m 0755 target/release/stickyws-load /out/stickyws-load
# Marks this stage's last image, so scripts/compose-e2e can find superseded ones to remove.
LABEL org.stickyws.stage=builder

FROM ${RUNTIME_IMAGE}
# A system user whose home is the working directory, so the default RECORDS_LOG (records.log)
# is writable when nothing is mounted. Numeric, so orchestrators can verify it is not root.
RUN groupadd --system --gid 10001 stickyws \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/stickyws \
      --shell /usr/sbin/nologin stickyws
COPY --from=builder /out/stickyws /out/stickyws-load /usr/local/bin/
COPY docker/healthcheck /usr/local/bin/stickyws-healthcheck
USER 10001:10001
LABEL org.opencontainers.image.title=stickyws
WORKDIR /var/lib/stickyws
EXPOSE 8000
# Liveness; docker-compose.yml asks /readyz instead, to hold nginx back until Redis is subscribed.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["stickyws-healthcheck", "/healthz"]
ENTRYPOINT ["stickyws"]
CMD ["serve"]
