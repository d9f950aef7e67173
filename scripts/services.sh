#!/usr/bin/env bash
# Make sure local PostgreSQL, Mosquitto and NATS (JetStream) answer on 127.0.0.1 (start them if this machine has them).
set -uo pipefail
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect 15 main start 2>/dev/null || true
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  mosquitto -d -c /etc/mosquitto/mosquitto.conf 2>/dev/null || mosquitto -d -p 1883 2>/dev/null || true
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.2; done
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && [ -x /usr/sbin/nats-server ]; then
  # the partitioned analytics stream's tests need JetStream (-js), with its store on disk
  mkdir -p "${NATS_STORE:-/var/lib/nats-server}" 2>/dev/null || NATS_STORE=$(mktemp -d)
  nohup /usr/sbin/nats-server -a 127.0.0.1 -p 4222 -js -sd "${NATS_STORE:-/var/lib/nats-server}" \
    >/dev/null 2>&1 &
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.2; done
fi
exit 0
