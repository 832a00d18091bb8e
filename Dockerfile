# The TIP explorer as a Hugging Face Space (Docker SDK) or any container host: CPU only, port 7860.
FROM python:3.11-slim

# Spaces run the container as uid 1000; give that user a HOME with writable caches.
RUN useradd --create-home --uid 1000 user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    TIP_THREADS=2 \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /home/user/app

# CPU-only torch first (about 200 MB instead of several GB of CUDA wheels), then the same requirements.txt:
# runtime only: the image has no test tools.
COPY --chown=user requirements-cpu.txt requirements.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements-cpu.txt \
    && pip install --no-cache-dir -r requirements.txt

# Only what runs: the engine, the app and every asset (checkpoints, gallery, precomputed results), so nothing
# downloads at run time; README.md and LICENSE because the package metadata reads them. No tests, docs or bench.
COPY --chown=user README.md LICENSE ./
COPY --chown=user assets ./assets
COPY --chown=user tipcore ./tipcore
COPY --chown=user app ./app
RUN pip install --no-cache-dir --no-deps -e .
USER 1000

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7860/_stcore/health', timeout=4).status == 200 else 1)"]

# XSRF protection off: inside the Space's iframe the XSRF cookie is not sent, so uploads fail with 403
# otherwise. Acceptable for a public demo without accounts; nothing here is private.
CMD ["streamlit", "run", "app/main.py", "--server.address=0.0.0.0", "--server.port=7860", "--server.headless=true", "--server.enableXsrfProtection=false", "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"]
