# CPU image of `tunelab serve`: the OpenAI-compatible API over finished runs (docs/deploy.md).
#   docker build -t tunelab .                                     # runs come from a volume at /runs
#   docker build -t tunelab --build-arg RUNS=runs/my-runs .       # or are copied into the image
#   docker run -p 8000:8000 -v "$PWD/runs:/runs" tunelab
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Exactly the locked versions, with --no-deps, as `make install` does. torch comes first and from PyTorch's
# CPU index: on PyPI, torch==2.13.0 for Linux is the CUDA build, which pulls gigabytes of nvidia-* wheels that
# a CPU server never uses (the lock's `torch==2.13.0` matches the CPU wheel's 2.13.0+cpu). llama-cpp-python is
# left out: only the tests use it (to check GGUF exports), and it is source-only, needing a compiler the slim image lacks.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu \
        "torch==$(sed -n 's/^torch==//p' requirements.lock)" \
    && grep -v -e '^torch==' -e '^llama[-_]cpp[-_]python==' requirements.lock > /tmp/no-torch.lock \
    && pip install --no-cache-dir --no-deps -r /tmp/no-torch.lock \
    && rm /tmp/no-torch.lock

# tunelab itself (not editable: the image has no source tree to edit).
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps --no-build-isolation /app

# A user without privileges; the runs, the models cache and the Hub cache are the only places it writes.
RUN useradd --create-home --uid 10001 --user-group tunelab \
    && mkdir -p /runs /cache \
    && chown tunelab:tunelab /runs /cache
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/tunelab-entrypoint
COPY deploy/healthcheck.py /usr/local/lib/tunelab/healthcheck.py

# Runs to bake into the image (a folder of runs in the build context); the default folder holds only a note.
ARG RUNS=deploy/runs
COPY --chown=tunelab:tunelab ${RUNS} /runs/

# numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd
USER 10001:10001
ENV TUNELAB_RUNS_DIR=/runs \
    TUNELAB_HOST=0.0.0.0 \
    TUNELAB_PORT=8000 \
    TUNELAB_CACHE=/cache/tunelab \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1
VOLUME ["/runs", "/cache"]
EXPOSE 8000

# /health answers once every model is loaded (the first start also dequantises bundled models into /cache).
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python3", "/usr/local/lib/tunelab/healthcheck.py"]
ENTRYPOINT ["tunelab-entrypoint"]
