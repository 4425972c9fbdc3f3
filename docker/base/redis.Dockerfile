# Stand-in for the official redis image, from Debian's redis-server (7.0 in bookworm), which also
# brings redis-cli for the healthcheck. Built by docker/build-base-images.
ARG BASE=stickyws-local/debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
# The official image is built with protected mode off; Debian's binary has it on, which refuses
# clients from other containers. The shipped compose file says so on its command line anyway.
CMD ["redis-server", "--protected-mode", "no"]
