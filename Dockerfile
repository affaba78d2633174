# syntax=docker/dockerfile:1
# One image for every subcommand (`serve`, `operator`, `prune`, `crds`, ...): the operator runs
# it and starts its registry pods from the same image (`imagecache serve --config ...`).
#
#   docker build -t imagecache .
#   docker run --rm -p 8080:8080 imagecache serve

# Build: the release binary from the locked dependency set. ring needs only the C compiler the
# image ships (no cmake, no OpenSSL).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin imagecache \
 && install -D -m 0755 target/release/imagecache /out/imagecache \
 && install -d -m 0755 /out/cache

# Run: glibc, CA certificates and tzdata, nothing else (no shell, no package manager). Debian 12
# matches the builder's glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/imagecache /usr/local/bin/imagecache
COPY --from=build --chown=65532:65532 /out/cache /var/lib/imagecache
# The cache directory (`imagePath`) of every subcommand, owned by the runtime user; the operator's
# registry pods mount their volume there.
ENV IMAGECACHE_IMAGE_PATH=/var/lib/imagecache
# glibc gives each new thread its own malloc arena; two keep RSS flat as the blocking-thread
# pool grows and shrinks (measured by bench/soak, see docs/reliability.md).
ENV MALLOC_ARENA_MAX=2
VOLUME ["/var/lib/imagecache"]
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/imagecache"]
CMD ["--help"]
