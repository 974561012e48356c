# The es-orders services (command and query) on Python 3.11. Build context: the repository.
#   docker build -t es-orders .
#   docker run --rm -p 8887:8887 -e ES_ORDERS_BOOTSTRAP_SERVERS=kafka:9092 es-orders query
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# confluent-kafka ships manylinux wheels with librdkafka inside: no compiler needed.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /nonexistent --no-create-home es-orders \
    && mkdir -p /var/lib/es-orders \
    && chown es-orders /var/lib/es-orders

# Listen on every interface inside the container; keep local stores on a volume.
ENV ES_ORDERS_HOST=0.0.0.0 \
    ES_ORDERS_STATE_DIR=/var/lib/es-orders
VOLUME ["/var/lib/es-orders"]
USER es-orders
EXPOSE 8886 8887

ENTRYPOINT ["es-orders"]
CMD ["query"]
