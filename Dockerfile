# Three targets from one file:
#
#   docker build -t ghcr.io/ethanke/traefik-metrics-scraper:TAG .
#       the default (last) target: workers, beat and the CLI
#   docker build --target flower -t ghcr.io/ethanke/traefik-metrics-scraper-flower:TAG .
#       the same image plus Flower (pinned by requirements.lock), for the monitoring UI
#   docker build --target dev-platform -t traefik-metrics-scraper-dev-platform:dev .
#       development only: the platform stub (sim.platform_stub) that docker-compose runs
#       as the dev platform; never deployed, so never pushed
#
# The production targets hold app/ and workers/ only: no simulator code (sim/ is a
# development package and is not in the wheel either).
# Only runtime dependencies are installed (no dev extras), pinned by requirements.lock.
# No secret is baked in: PLATFORM_INTERNAL_SECRET, FLOWER_BASIC_AUTH and any Redis
# password come from the environment at run time (a Kubernetes Secret, or compose's env).

FROM python:3.11-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app

WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY beat_schedule.py ./
COPY app ./app
COPY workers ./workers
RUN pip install -c requirements.lock . \
 && rm -rf build ./*.egg-info

# Run from a directory without the sources, so the installed package is what is imported.
WORKDIR /home/app
USER 10001:10001

# Workers by default. Beat: celery -A app beat --schedule=/tmp/celerybeat-schedule (only /tmp
# is writable under a read-only root filesystem). CLI: traefik-metrics-scraper status.
CMD ["celery", "-A", "app", "worker", "-Q", "fetch,report"]

FROM base AS flower
USER root
RUN pip install -c /src/requirements.lock flower
USER 10001:10001
EXPOSE 5555
# Flower has no authentication by default. Basic auth comes from FLOWER_BASIC_AUTH
# (user:password) in the environment: Flower reads FLOWER_* variables itself, so the
# password is never on a command line. Without it the container refuses to start.
CMD ["sh", "-c", "test -n \"$FLOWER_BASIC_AUTH\" || { echo 'FLOWER_BASIC_AUTH (user:password) is not set: refusing to run Flower without auth' >&2; exit 2; }; exec celery -A app flower --port=5555"]

# Development only: the platform stub, for docker-compose's dev platform. It uses only the
# standard library; `python -m` puts the working directory on sys.path, so `sim` is
# importable from /opt/dev.
FROM base AS dev-platform
WORKDIR /opt/dev
COPY sim ./sim
EXPOSE 3000
CMD ["python", "-m", "sim.platform_stub", "--host", "0.0.0.0", "--port", "3000"]

# The default target: the scraper image.
FROM base AS scraper
