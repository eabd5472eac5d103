# syntax=docker/dockerfile:1
# quantd images. Docker does not run on the project's build machines: this file is checked by
# tests/deploy_files_test.py (stages, flags, ports, user) but not built in CI.
#
#   docker build -t quantd .                                       # coordinator + CPU workers
#   docker build --target worker-cuda -t quantd-worker-cuda .      # GPU worker
#
# Both images hold the same three binaries (quantd, quantd-worker, quantctl); worker-cuda builds
# them with the CUDA toolkit present and adds the CUDA runtime libraries. NVIDIA's nvidia/cuda
# images are Ubuntu-based and would not carry the Debian 12 gRPC/Abseil/protobuf libraries the
# binaries link against, so worker-cuda is debian:12-slim plus NVIDIA's Debian 12 CUDA repository.
# worker-cuda's quantd-worker has the CUDA device (issue 6): --device auto picks cuda:0 when the
# container sees a GPU, else the CPU.

ARG CUDA_VERSION=12-6
# -march for the C++ code: images run on machines other than the one that built them, so a
# portable level (AVX2/FMA, Haswell and later) instead of the source build's "native".
ARG QUANTD_ARCH=x86-64-v3

# ---- builder: Debian 12 with the packages scripts/install_deps.sh installs -------------------
FROM debian:12 AS builder
ARG QUANTD_ARCH
COPY scripts/install_deps.sh /tmp/install_deps.sh
RUN QUANTD_BUILD_ONLY=1 bash /tmp/install_deps.sh && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUANTD_BUILD_TESTS=OFF -DQUANTD_ARCH=${QUANTD_ARCH} \
 && ninja -C /build quantd quantd-worker quantctl \
 && strip --strip-debug /build/quantd /build/quantd-worker /build/quantctl

# ---- builder-cuda: the same build with the CUDA toolkit installed ---------------------------
FROM builder AS builder-cuda
ARG CUDA_VERSION
ARG QUANTD_ARCH
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
RUN dpkg -i /tmp/cuda-keyring.deb && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      cuda-toolkit-${CUDA_VERSION} \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH}
RUN rm -rf /build && cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DQUANTD_BUILD_TESTS=OFF -DQUANTD_ARCH=${QUANTD_ARCH} -DCUDAToolkit_ROOT=/usr/local/cuda \
 && ninja -C /build quantd quantd-worker quantctl \
 && strip --strip-debug /build/quantd /build/quantd-worker /build/quantctl

# ---- runtime: shared libraries only, non-root user, data volume -----------------------------
FROM debian:12-slim AS runtime
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libabsl20220623 libc-ares2 libcivetweb1 libgomp1 libgrpc++1.51 libgrpc29 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprotobuf32 libre2-9 \
      libsqlite3-0 libssl3 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 quantd \
 && useradd --system --uid 10001 --gid quantd --home-dir /var/lib/quantd --shell /usr/sbin/nologin quantd \
 && install -d -o quantd -g quantd /var/lib/quantd /var/cache/quantd-worker \
 && install -d /models

# ---- worker-cuda: GPU worker ----------------------------------------------------------------
FROM runtime AS worker-cuda
ARG CUDA_VERSION
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
RUN dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      cuda-cudart-${CUDA_VERSION} libcublas-${CUDA_VERSION} libcusolver-${CUDA_VERSION} \
      libcusparse-${CUDA_VERSION} libnvjitlink-${CUDA_VERSION} \
 && rm -rf /var/lib/apt/lists/*
# The NVIDIA container runtime mounts the driver (libcuda) from the host.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64
COPY --from=builder-cuda /build/quantd /build/quantd-worker /build/quantctl /usr/local/bin/
USER quantd
WORKDIR /var/lib/quantd
CMD ["quantd-worker", "--coordinator=quantd:7070", "--device=auto", "--cache_dir=/var/cache/quantd-worker"]

# ---- quantd (default target): coordinator; also runs CPU workers (quantd-worker) -----------
FROM runtime AS quantd
COPY --from=builder /build/quantd /build/quantd-worker /build/quantctl /usr/local/bin/
USER quantd
WORKDIR /var/lib/quantd
VOLUME ["/var/lib/quantd"]
EXPOSE 7070 9464
# Jobs may read model directories and calibration files only under /models (mount them there).
CMD ["quantd", "--listen=0.0.0.0:7070", "--metrics_listen=0.0.0.0:9464", "--data_dir=/var/lib/quantd", "--local_workers=0", "--input_root=/models"]
