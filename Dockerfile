# faceq worker / producer / Flower image. CUDA torch wheels by default (GPU hosts);
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU image.
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /app
# exactly what CI tested (make lock): every package pinned and hash-checked; torch stays the one above
COPY requirements/worker.lock requirements/worker.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/worker.lock
COPY pyproject.toml README.md celeryconfig.py ./
COPY faceq faceq
COPY models models
COPY workers workers
COPY producer producer
RUN pip install --no-cache-dir --no-deps ".[worker]" && pip check
RUN useradd --create-home faceq
USER faceq
CMD ["python", "-m", "faceq.workers", "--device", "cuda:0"]
