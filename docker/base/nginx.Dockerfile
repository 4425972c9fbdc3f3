# Stand-in for the official nginx image, from Debian's nginx-light (1.22 in bookworm; the official
# image is newer, and nginx.conf uses nothing newer than 1.22). Built by docker/build-base-images.
ARG BASE=stickyws-local/debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
# As in the official image: SIGQUIT is nginx's graceful stop.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
