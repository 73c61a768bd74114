# faceq worker / producer / Flower image. CUDA torch wheels by default (GPU hosts);
# build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU image.
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY faceq faceq
COPY models models
COPY workers workers
COPY producer producer
RUN pip install --no-cache-dir .
RUN useradd --create-home faceq
USER faceq
CMD ["python", "-m", "workers", "--device", "cuda:0"]
