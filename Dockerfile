# One image for every EVCharging program. Each container runs one of the console
# scripts: EV_Central, EV_CP_E, EV_CP_M, EV_Driver, EV_Registry or EV_RFID (see
# docker-compose.yml and docs/deployment.md).
#
#   docker build -t evcharging .
#   docker run --rm evcharging EV_Driver --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    EV_DATA_DIR=/data

# The pinned runtime requirements first: this layer is rebuilt only when they change.
# No test or benchmark requirements (requirements-dev.txt) go into the image.
COPY requirements.txt /tmp/evcharging/requirements.txt
RUN pip install -r /tmp/evcharging/requirements.txt

# Then the project itself; its dependencies are already in place.
COPY pyproject.toml README.md /tmp/evcharging/
COPY ev_common /tmp/evcharging/ev_common
COPY ev_central /tmp/evcharging/ev_central
COPY ev_cp_engine /tmp/evcharging/ev_cp_engine
COPY ev_cp_monitor /tmp/evcharging/ev_cp_monitor
COPY ev_driver /tmp/evcharging/ev_driver
COPY ev_rfid /tmp/evcharging/ev_rfid
COPY ev_registry /tmp/evcharging/ev_registry
COPY ev_weather /tmp/evcharging/ev_weather
RUN pip install --no-deps /tmp/evcharging && rm -rf /tmp/evcharging

# Healthchecks and start order: ev-port listening PORT, ev-port wait HOST PORT.
COPY deploy/ev_port.py /usr/local/bin/ev-port
RUN chmod 0755 /usr/local/bin/ev-port \
    && useradd --create-home --uid 1000 --user-group ev \
    && mkdir -p /data /secrets/central /secrets/registry /secrets/public /secrets/installer \
    && chown ev:ev /data /secrets/central /secrets/registry /secrets/public /secrets/installer \
    && chmod 0700 /secrets/central /secrets/registry /secrets/installer

# /data: the working directory and $EV_DATA_DIR, where Central keeps its SQLite file
# (when run without --db) and its log file, and where files a program writes next to
# it land. Mount a volume there to keep them (docker-compose.yml does).
# /secrets/*: secure mode's certificates and token, in volumes docker-compose.yml mounts there
# (each starts empty, owned by ev: a named volume takes its mount point's owner and mode).
WORKDIR /data
USER ev

CMD ["EV_Central", "--help"]
