#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster under $PEERS_DIR/pg-<name>, on 127.0.0.1:<port>.
#
#   pg.sh init NAME PORT   initdb, start, create role `sark` (CREATEDB) and database `sark`;
#                          prints the URL
#   pg.sh start NAME       start an initialised cluster again
#   pg.sh stop NAME        stop it (fast shutdown); a no-op if it is not running
#
# The superuser `postgres` connects over the cluster's own socket directory (trust); the
# `sark` role connects over TCP with a password (scram-sha-256).
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
: "${PEERS_DIR:?PEERS_DIR must be set}"
cmd=${1:?usage: pg.sh init|start|stop NAME [PORT]}
name=${2:?usage: pg.sh init|start|stop NAME [PORT]}
dir="$PEERS_DIR/pg-$name"

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-p $(cat "$dir/port") -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null
}

case "$cmd" in
init)
  port=${3:?usage: pg.sh init NAME PORT}
  rm -rf "$dir"; mkdir -p "$dir"
  echo "$port" >"$dir/port"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  as_postgres "$PGBIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  start
  psql -h "$dir" -p "$port" -U postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE ROLE sark LOGIN CREATEDB PASSWORD 'sarkpw'" -c "CREATE DATABASE sark OWNER sark"
  echo "postgres://sark:sarkpw@127.0.0.1:$port/sark"
  ;;
start) start ;;
stop)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
  fi
  ;;
*) echo "usage: pg.sh init|start|stop NAME [PORT]" >&2; exit 2 ;;
esac
