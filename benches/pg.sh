#!/usr/bin/env bash
# PostgreSQL figures (issue 5): pgbench select-only (-S) and the default TPC-B-like script,
# -c 8 -j 2, against the same throwaway server directly, through pgbouncer (session pool)
# and through Sluice (the shipped mask plugin on, recording in async and in strict mode, and
# strict with the record in PostgreSQL (issue 21): a second throwaway server, as a cluster's
# shared record would be, rather than the embedded redb).
#
#   benches/pg.sh            # needs: cargo build --release; pgbench, pgbouncer, initdb, pg_ctl
#   SCRIPTS=select-only TARGETS="pgbouncer sluice-async" SECONDS_PER_RUN=10 ROUNDS=3 benches/pg.sh
#
# Targets: direct, pgbouncer, sluice-async, sluice-strict, sluice-strict-pg (the default set)
# and sluice-bare: async with no plugin on the connection, to tell the plugins' cost from
# the relay's and the record's; sluice-strict-nojournal: strict with SLUICE_RECORD_JOURNAL=off
# (each commit durable in redb itself, as before the record's journal);
# sluice-async-noprescreen: async with SLUICE_PLUGIN_PRESCREEN=off (the plugins called with
# every frame of their interest, as before plugins declared prescreens);
# sluice-async-linger: async with record_linger_ms = LINGER_MS (default 100; the shipped
# default is 10), the record's writer gathering events that long per commit.
#
# tokio-copy and tokio-copy-1: no gateway at all, bytes copied both ways by tokio with two
# workers or on one thread (benches/relay_floor.rs): the floor under any relay on tokio;
# tokio-copy-pinned: the same on two current-thread runtimes, each keeping the connections it
# accepted (thread-per-core).
# Prints one line per (target, script): TPS and mean latency, from pgbench's own report, and
# the CPU each part used per transaction (the proxy, the server's processes, pgbench),
# measured from /proc over the run less its first 2 s and last second, and how often the
# proxy's threads were switched out per transaction (each switch is a sleep and a wake-up);
# for Sluice, the record's writer thread's share of the proxy's CPU (`writer`).
# Each round ends with the disk's fsync latency (4 KiB written and fdatasync'd beside the
# strict gateway's record, median of 200) and the bound it sets on strict recording: at most
# two group commits per transaction in flight, so 8 clients / (2 x fsync) transactions/s;
# and the same for 12 scattered pages, the shape of one redb commit of the record.
# PROFILE=DIR also samples each proxy's CPU over the same window with `perf record` and writes
# its flat profile (self time by symbol) to DIR/TARGET-SCRIPT.txt (the samples in .perf.data
# beside it; sampling adds to the CPU figures of that run; PERF_CALLS=fp|dwarf adds call
# graphs, PERF_HZ sets the rate). SYSCALLS=DIR instead counts the
# proxy's system calls over the window (`perf stat`) into DIR/TARGET-SCRIPT.txt.
# Clients connect without TLS everywhere (SSLMODE=require to measure Sluice with it: the
# throwaway server and pgbouncer here have no certificates).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
SLUICE=${SLUICE:-$PWD/target/release/sluice}
work=$(mktemp -d /tmp/sluice-pgbench.XXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

COPY2=$(free_port); COPY1=$(free_port); COPYP=$(free_port)
PG=$(free_port); BOUNCER=$(free_port); ASYNC=$(free_port); STRICT=$(free_port); BARE=$(free_port)
RECORD_PG=$(free_port); STRICT_PG=$(free_port); STRICT_NJ=$(free_port); ASYNC_NP=$(free_port)
ASYNC_LINGER=$(free_port)
mkdir -p "$work/pg" "$work/bouncer" "$work/record-pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work/pg" "$work/bouncer" "$work/record-pg"
cleanup() {
  as_pg pg_ctl -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  as_pg pg_ctl -D "$work/record-pg/data" -m immediate stop >/dev/null 2>&1 || true
  kill "${pids[@]}" 2>/dev/null || true
  pkill -f "$work/" 2>/dev/null || true # pgbouncer runs under runuser, which does not pass the signal on
  rm -rf "$work"
}
pids=()
trap cleanup EXIT

as_pg initdb -D "$work/pg/data" -U postgres --auth=trust >/dev/null
as_pg pg_ctl -D "$work/pg/data" -o "-p $PG -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=100" -l "$work/pg/log" -w start >/dev/null
pgbench -i -s 10 -h 127.0.0.1 -p "$PG" -U postgres postgres >/dev/null 2>&1
as_pg initdb -D "$work/record-pg/data" -U postgres --auth=trust >/dev/null
as_pg pg_ctl -D "$work/record-pg/data" -o "-p $RECORD_PG -k $work/record-pg -c listen_addresses=127.0.0.1" -l "$work/record-pg/log" -w start >/dev/null

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

gateway() { # NAME MODE PORT [STORE-SETTINGS] [POLICIES] [ENVIRONMENT] [GATEWAY-SETTINGS]
  mkdir -p "$work/$1"
  cat > "$work/$1/sluice.toml" <<EOF
${4:-}
[gateway]
connections_key = "$work/connections.key"
listen = "127.0.0.1:0"
data_dir = "data"
policies = "${5:-${POLICIES:-$PWD/policies}}"
record_mode = "$2"
${7:-}
dev_tokens = true
[connections.pg]
kind = "postgres"
listen = "127.0.0.1:$3"
upstream = "127.0.0.1:$PG"
database = "postgres"
user = "postgres"
EOF
  (cd "$work/$1" && exec env ${6:-} "$SLUICE" serve >/dev/null 2>&1) &
  pids+=($!)
  proxy_pid[$1]=$!
}
declare -A proxy_pid
for key in cluster connections; do head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/$key.key"; done
gateway async async "$ASYNC"
# The same with the plugins called on every frame of their interest (no prescreens run).
gateway async-noprescreen async "$ASYNC_NP" "" "" SLUICE_PLUGIN_PRESCREEN=off
# The same with the record's writer gathering events for longer per commit.
gateway async-linger async "$ASYNC_LINGER" "" "" "" "record_linger_ms = ${LINGER_MS:-100}"
# The same with no plugin on the connection: what the relay and the record cost alone.
mkdir -p "$work/bare-policies"
printf '[chains]\npg = []\n[roles.default]\nconnect = ["developers"]\n' >"$work/bare-policies/default.toml"
gateway bare async "$BARE" "" "$work/bare-policies"
gateway strict strict "$STRICT"
# The same with every commit durable in redb itself, as before the record's journal.
gateway strict-nojournal strict "$STRICT_NJ" "" "" SLUICE_RECORD_JOURNAL=off
gateway strict-pg strict "$STRICT_PG" "[store]
kind = \"postgres\"
url = \"postgres://postgres@127.0.0.1:$RECORD_PG/postgres\"
node = \"bench\"
cluster_key = \"$work/cluster.key\""
for _ in $(seq 300); do # the first start compiles the plugins
  [ -s "$work/async/data/dev-tokens.json" ] && [ -s "$work/strict/data/dev-tokens.json" ] &&
    [ -s "$work/bare/data/dev-tokens.json" ] && [ -s "$work/strict-nojournal/data/dev-tokens.json" ] &&
    [ -s "$work/strict-pg/data/dev-tokens.json" ] &&
    [ -s "$work/async-noprescreen/data/dev-tokens.json" ] &&
    [ -s "$work/async-linger/data/dev-tokens.json" ] && break
  sleep 0.1
done
sleep 1
TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/async/data/dev-tokens.json")
ASYNC_NP_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/async-noprescreen/data/dev-tokens.json")
ASYNC_LINGER_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/async-linger/data/dev-tokens.json")
BARE_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/bare/data/dev-tokens.json")
STRICT_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/strict/data/dev-tokens.json")
STRICT_NJ_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/strict-nojournal/data/dev-tokens.json")
STRICT_PG_TOKEN=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['user'])" "$work/strict-pg/data/dev-tokens.json")

FLOOR=$PWD/target/release/examples/relay_floor
if [[ " ${TARGETS:-} " == *" tokio-copy"* ]]; then
  [ -x "$FLOOR" ] || cargo build -q --release -p sluice --example relay_floor
  "$FLOOR" "127.0.0.1:$COPY2" "127.0.0.1:$PG" 2 & pids+=($!); proxy_pid[copy2]=$!
  "$FLOOR" "127.0.0.1:$COPY1" "127.0.0.1:$PG" 0 & pids+=($!); proxy_pid[copy1]=$!
  "$FLOOR" "127.0.0.1:$COPYP" "127.0.0.1:$PG" p2 & pids+=($!); proxy_pid[copyp]=$!
fi
proxy_pid[pgbouncer]=$(pgrep -f "^pgbouncer $work/bouncer" || echo 0)

# CPU clock ticks the proxy PID, the server (the postmaster and its children) and pgbench
# used from 2 s into a run for WINDOW seconds (one process: it starts before the load does).
cpu_ticks() { # PROXY-PID WINDOW
  python3 - "$1" "$(head -1 "$work/pg/data/postmaster.pid")" "$2" <<'PY'
import os, sys, time
proxy, postmaster, window = sys.argv[1], sys.argv[2], float(sys.argv[3])
def ticks():  # {pid: (whose, utime + stime of all its threads)}
    used = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue  # ended meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        who = ("proxy" if pid == proxy else "server" if postmaster in (pid, fields[1])
               else "client" if comm == "pgbench" else None)
        if who:
            used[pid] = (who, int(fields[11]) + int(fields[12]))
    try:  # the record's writer, one thread of the proxy (Sluice only)
        for task in os.listdir(f"/proc/{proxy}/task"):
            if open(f"/proc/{proxy}/task/{task}/comm").read().strip() == "sluice-record":
                fields = open(f"/proc/{proxy}/task/{task}/stat").read().rsplit(")", 1)[1].split()
                used["writer"] = ("writer", int(fields[11]) + int(fields[12]))
    except OSError:
        pass
    return used
def switches():  # context switches of the proxy's threads: each is a sleep and a wake-up
    total = 0
    try:
        for task in os.listdir(f"/proc/{proxy}/task"):
            for line in open(f"/proc/{proxy}/task/{task}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[-1])
    except OSError:
        pass
    return total
time.sleep(2)
before, switched = ticks(), switches()
time.sleep(window)
switched = switches() - switched
spent = {"proxy": 0, "server": 0, "client": 0, "writer": 0}
for pid, (who, now) in ticks().items():  # (a process that ended meanwhile is not counted)
    spent[who] += now - before.get(pid, (who, 0))[1]
print(spent["proxy"], spent["server"], spent["client"], switched, spent["writer"])
PY
}

run() { # LABEL PROXY-PID PORT PASSWORD SCRIPT-ARGS...
  local label=$1 proxy=$2 port=$3 password=$4; shift 4
  local out window=$((SECONDS_PER_RUN - 3))
  cpu_ticks "$proxy" "$window" >"$work/cpu" &
  local ticks=$! sampler=
  if [ -n "${PROFILE:-}" ] && [ "$proxy" != 0 ]; then
    mkdir -p "$PROFILE"
    (sleep 2 && exec perf record -q -F "${PERF_HZ:-1999}" ${PERF_CALLS:+--call-graph "$PERF_CALLS"} -p "$proxy" -o "$PROFILE/$label-$SCRIPT.perf.data" -- sleep "$window") >/dev/null 2>&1 &
    sampler=$!
  fi
  if [ -n "${SYSCALLS:-}" ] && [ "$proxy" != 0 ]; then
    mkdir -p "$SYSCALLS"
    (sleep 2 && exec perf stat -e "$(printf 'syscalls:sys_enter_%s,' sendto recvfrom epoll_wait futex write read writev)context-switches" \
      -p "$proxy" -o "$SYSCALLS/$label-$SCRIPT.txt" -- sleep "$window") >/dev/null 2>&1 &
    sampler=$!
  fi
  out=$(PGSSLMODE=${SSLMODE:-disable} PGPASSWORD=$password pgbench -n -c 8 -j 2 -T "$SECONDS_PER_RUN" -h 127.0.0.1 -p "$port" -U postgres "$@" postgres 2>&1)
  wait "$ticks"
  if [ -n "$sampler" ] && [ -n "${PROFILE:-}" ]; then
    wait "$sampler"
    perf report -q -i "$PROFILE/$label-$SCRIPT.perf.data" --no-children --sort dso,symbol --percent-limit 0.3 \
      >"$PROFILE/$label-$SCRIPT.txt" 2>/dev/null
  fi
  local tps latency
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  read -r proxy_ticks server_ticks client_ticks proxy_switches writer_ticks <"$work/cpu"
  per_txn() { python3 -c "print(round($1 / $(getconf CLK_TCK) * 1e6 / ($tps * $window), ${2:-None}))"; } # TICKS [DIGITS]
  printf '%-16s %-10s tps %8.0f  latency %7s ms  cpu µs/txn: proxy %3s (writer %s) server %3s pgbench %3s  proxy switches/txn %s\n' \
    "$label" "$SCRIPT" "$tps" "$latency" \
    "$(per_txn "$proxy_ticks")" "$(per_txn "$writer_ticks" 1)" \
    "$(per_txn "$server_ticks")" "$(per_txn "$client_ticks")" \
    "$(python3 -c "print(round($proxy_switches / ($tps * $window), 2))")"
}
for round in $(seq "${ROUNDS:-1}"); do # rounds interleave the targets: the machine drifts
for SCRIPT in ${SCRIPTS:-select-only tpcb-like}; do
  args=(); [ "$SCRIPT" = select-only ] && args=(-S)
  for target in ${TARGETS:-direct pgbouncer sluice-async sluice-strict sluice-strict-pg}; do
    case $target in
      direct) run direct 0 "$PG" "" "${args[@]}" ;;
      tokio-copy) run tokio-copy "${proxy_pid[copy2]}" "$COPY2" "" "${args[@]}" ;;
      tokio-copy-1) run tokio-copy-1 "${proxy_pid[copy1]}" "$COPY1" "" "${args[@]}" ;;
      tokio-copy-pinned) run tokio-copy-pin "${proxy_pid[copyp]}" "$COPYP" "" "${args[@]}" ;;
      pgbouncer) run pgbouncer "${proxy_pid[pgbouncer]}" "$BOUNCER" "" "${args[@]}" ;;
      sluice-async) run sluice-async "${proxy_pid[async]}" "$ASYNC" "$TOKEN" "${args[@]}" ;;
      sluice-async-linger) run sluice-async-linger "${proxy_pid[async-linger]}" "$ASYNC_LINGER" "$ASYNC_LINGER_TOKEN" "${args[@]}" ;;
      sluice-async-noprescreen) run sluice-async-np "${proxy_pid[async-noprescreen]}" "$ASYNC_NP" "$ASYNC_NP_TOKEN" "${args[@]}" ;;
      sluice-bare) run sluice-bare "${proxy_pid[bare]}" "$BARE" "$BARE_TOKEN" "${args[@]}" ;;
      sluice-strict) run sluice-strict "${proxy_pid[strict]}" "$STRICT" "$STRICT_TOKEN" "${args[@]}" ;;
      sluice-strict-nojournal) run sluice-strict-nj "${proxy_pid[strict-nojournal]}" "$STRICT_NJ" "$STRICT_NJ_TOKEN" "${args[@]}" ;;
      sluice-strict-pg) run sluice-strict-pg "${proxy_pid[strict-pg]}" "$STRICT_PG" "$STRICT_PG_TOKEN" "${args[@]}" ;;
    esac
  done
done
python3 - "$work/strict/data" <<'PY'
import os, random, statistics, sys, time
# A redb commit of the record rewrites about 12 scattered 4 KiB pages (the tables' changed
# leaves and branches, the allocator's state) and its header, then fdatasyncs: on a virtual
# disk each scattered page is an I/O of its own. Both shapes, in a file written before.
path = os.path.join(sys.argv[1], "fsync-probe")
fd, block = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), os.urandom(4096)
os.pwrite(fd, bytes(8 << 20), 0)
os.fsync(fd)
def p50(pages):
    times = []
    for _ in range(200):
        start = time.perf_counter()
        for _ in range(pages):
            os.pwrite(fd, block, random.randrange(2048) * 4096)
        os.fdatasync(fd)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
one, commit = p50(1), p50(12)
os.close(fd)
os.unlink(path)
print(f"fsync (4 KiB, fdatasync) p50 {one * 1e6:.0f} µs: strict bound 8 / (2 x fsync) = {8 / (2 * one):.0f} tps; "
      f"12 scattered pages then fdatasync (a commit's shape) p50 {commit * 1e6:.0f} µs: {8 / (2 * commit):.0f} tps")
PY
done
