#!/usr/bin/env bash
# A throwaway Redis server under $PEERS_DIR/redis-<name>, on 127.0.0.1:<port>.
#
#   redis.sh start NAME PORT   start it (no persistence); prints the URL
#   redis.sh stop NAME         stop it; a no-op if it is not running
set -euo pipefail
: "${PEERS_DIR:?PEERS_DIR must be set}"
cmd=${1:?usage: redis.sh start|stop NAME [PORT]}
name=${2:?usage: redis.sh start|stop NAME [PORT]}
dir="$PEERS_DIR/redis-$name"
case "$cmd" in
start)
  port=${3:?usage: redis.sh start NAME PORT}
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for _ in $(seq 200); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  if ! redis-cli -p "$port" ping >/dev/null; then
    echo "redis.sh: redis-server did not answer on port $port within 10 s; its log:" >&2
    cat "$dir/redis.log" >&2 || true
    exit 1
  fi
  echo "redis://127.0.0.1:$port"
  ;;
stop)
  if [ -f "$dir/redis.pid" ]; then
    pid=$(cat "$dir/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir/redis.pid"
  fi
  ;;
*) echo "usage: redis.sh start|stop NAME [PORT]" >&2; exit 2 ;;
esac
