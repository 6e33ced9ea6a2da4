# syntax=docker/dockerfile:1
#
# A small image of `envelope`: one statically linked binary (glibc, +crt-static) on an empty
# base, run as UID/GID 65532.
#
#   docker build -t envelope:dev .            # or: buildah bud -t envelope:dev .
#   docker run --rm envelope:dev --version
#
# The plugin in Kubernetes: deploy/kubernetes/envelope-plugin.static-pod.yaml. The image has
# no shell and no /etc/passwd: give the plugin its paths (`--config`, or `--data-dir` and
# `--socket`) and the key server `--data-dir`.
#
# Stage `prebuilt` makes the same image from a binary built outside (what the test does, with
# no registry to pull the Rust image from): a context directory holding `envelope` (built with
# the RUSTFLAGS and --target of the `build` stage) and `ca-certificates.crt`:
#   buildah bud --target prebuilt -f Dockerfile -t envelope:dev CONTEXT_DIR
# Checked by tests/python/test_deploy.py.

ARG RUST_VERSION=1.95

# --- the runtime image's settings, shared by `prebuilt` and the default image ------------------
FROM scratch AS runtime
# The key server's and the aws backend's TLS clients trust the system's CA certificates.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# The key server's API (`envelope kms serve --listen 0.0.0.0:4599`); the plugin serves a Unix
# socket, and both keep /livez, /readyz and /metrics on 127.0.0.1.
EXPOSE 4599
ENTRYPOINT ["/envelope"]
CMD ["--help"]

# --- the image from a prebuilt static binary (see above) --------------------------------------
FROM runtime AS prebuilt
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY envelope /envelope

# --- build: a static binary ---------------------------------------------------------------------
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH=amd64
WORKDIR /src
COPY . .
# glibc's static libraries: no musl toolchain needed, and the same C compiler builds aws-lc,
# SQLite and mimalloc. With --target, RUSTFLAGS do not reach build scripts and proc macros.
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && cargo build --release --locked -p envelope --target "$triple" \
 && install -D -m 0755 "target/$triple/release/envelope" /out/envelope \
 && file /out/envelope | grep -Eq 'statically linked|static-pie linked' \
 && /out/envelope --version \
 && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /out/ca-certificates.crt

# --- the image (the default target) -------------------------------------------------------------
FROM runtime
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/envelope /envelope
