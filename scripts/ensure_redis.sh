#!/usr/bin/env bash
# Makes sure a Redis server answers on $REDIS_HOST:$REDIS_PORT (default 127.0.0.1:6379)
# and that the redis-server binary exists (tests start extra servers on free ports).
# Installs Debian's redis-server when it is missing.
set -euo pipefail
host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}

ping() {
  # RESP PING over bash's /dev/tcp: needs no redis-cli.
  exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply=""
  read -r -t 2 reply <&3 || true
  exec 3<&- 3>&-
  [[ "$reply" == +PONG* ]]
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing Debian's redis-server" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

if ping; then
  echo "redis: answering on $host:$port"
  exit 0
fi

echo "redis: nothing answers on $host:$port, starting redis-server" >&2
mkdir -p .redis
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir "$PWD/.redis" --logfile "$PWD/.redis/redis.log"
for _ in $(seq 1 50); do
  if ping; then echo "redis: started on $host:$port"; exit 0; fi
  sleep 0.1
done
echo "redis: failed to start on $host:$port (see .redis/redis.log)" >&2
exit 1
