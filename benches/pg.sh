#!/usr/bin/env bash
# PostgreSQL figures (issue 5): pgbench select-only (-S) and the default TPC-B-like script,
# -c 8 -j 2, against the same throwaway server directly, through pgbouncer (session pool)
# and through Sluice (the shipped mask plugin on, recording in async and in strict mode).
#
#   benches/pg.sh            # needs: cargo build --release; pgbench, pgbouncer, initdb, pg_ctl
#   SCRIPTS=select-only TARGETS="pgbouncer sluice-async" SECONDS_PER_RUN=10 ROUNDS=3 benches/pg.sh
#
# Prints one line per (target, script): TPS and mean latency, from pgbench's own report.
# Clients connect without TLS everywhere (SSLMODE=require to measure Sluice with it: the
# throwaway server and pgbouncer here have no certificates).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
SLUICE=$PWD/target/release/sluice
work=$(mktemp -d /tmp/sluice-pgbench.XXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PG=$(free_port); BOUNCER=$(free_port); ASYNC=$(free_port); STRICT=$(free_port)
mkdir -p "$work/pg" "$work/bouncer"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work/pg" "$work/bouncer"
cleanup() {
  as_pg pg_ctl -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  kill "${pids[@]}" 2>/dev/null || true
  pkill -f "$work/" 2>/dev/null || true # pgbouncer runs under runuser, which does not pass the signal on
  rm -rf "$work"
}
pids=()
trap cleanup EXIT

as_pg initdb -D "$work/pg/data" -U postgres --auth=trust >/dev/null
as_pg pg_ctl -D "$work/pg/data" -o "-p $PG -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=100" -l "$work/pg/log" -w start >/dev/null
pgbench -i -s 10 -h 127.0.0.1 -p "$PG" -U postgres postgres >/dev/null 2>&1

cat > "$work/bouncer/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PG dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER
unix_socket_dir =
auth_type = trust
auth_file = $work/bouncer/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $work/bouncer/log
EOF
echo '"postgres" ""' > "$work/bouncer/users.txt"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work/bouncer"
as_pg pgbouncer "$work/bouncer/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)

gateway() { # NAME MODE PORT
  mkdir -p "$work/$1"
  cat > "$work/$1/sluice.toml" <<EOF
[gateway]
listen = "127.0.0.1:0"
data_dir = "data"
policies = "${POLICIES:-$PWD/policies}"
record_mode = "$2"
dev_tokens = true
[connections.pg]
kind = "postgres"
listen = "127.0.0.1:$3"
upstream = "127.0.0.1:$PG"
database = "postgres"
user = "postgres"
EOF
  (cd "$work/$1" && exec "$SLUICE" serve >/dev/null 2>&1) &
  pids+=($!)
}
gateway async async "$ASYNC"
gateway strict strict "$STRICT"
for _ in $(seq 300); do # the first start compiles the plugins
  [ -s "$work/async/data/dev-tokens.json" ] && [ -s "$work/strict/data/dev-tokens.json" ] && break
  sleep 0.1
done
sleep 1
TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/async/data/dev-tokens.json")
STRICT_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/strict/data/dev-tokens.json")

run() { # LABEL PORT PASSWORD SCRIPT-ARGS...
  local label=$1 port=$2 password=$3; shift 3
  local out
  out=$(PGSSLMODE=${SSLMODE:-disable} PGPASSWORD=$password pgbench -n -c 8 -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "$port" -U postgres "$@" postgres 2>&1)
  printf '%-16s %-10s tps %8.0f  latency %7s ms\n' "$label" "${SCRIPT}" \
    "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")" \
    "$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")"
}
for round in $(seq "${ROUNDS:-1}"); do # rounds interleave the targets: the machine drifts
for SCRIPT in ${SCRIPTS:-select-only tpcb-like}; do
  args=(); [ "$SCRIPT" = select-only ] && args=(-S)
  for target in ${TARGETS:-direct pgbouncer sluice-async sluice-strict}; do
    case $target in
      direct) run direct "$PG" "" "${args[@]}" ;;
      pgbouncer) run pgbouncer "$BOUNCER" "" "${args[@]}" ;;
      sluice-async) run sluice-async "$ASYNC" "$TOKEN" "${args[@]}" ;;
      sluice-strict) run sluice-strict "$STRICT" "$STRICT_TOKEN" "${args[@]}" ;;
    esac
  done
done
done
