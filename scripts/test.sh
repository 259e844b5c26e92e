#!/usr/bin/env bash
# Runs Strata's whole test suite: formatting, lints, every test, the docs, and a smoke run of the scenario
# benchmarks and the example. Works on a fresh Debian machine: it installs and starts what is missing (Rust from
# Debian if cargo is absent, redis-server, PostgreSQL). Set STRATA_REDIS_URL / STRATA_PG_URL to use your own.
# CI calls exactly this script (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

need_cargo() {
  if command -v cargo >/dev/null 2>&1; then return; fi
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" && return
  say "cargo not found: installing Debian's Rust toolchain"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc rustfmt rust-clippy >/dev/null
}

# Answers PING on 127.0.0.1:6379 (bash's /dev/tcp: no redis-cli needed).
redis_up() {
  timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6379 && printf "PING\r\n" >&3 && read -r line <&3 && [[ $line == +PONG* ]]' 2>/dev/null
}

need_redis() {
  if [ -n "${STRATA_REDIS_URL:-}" ]; then
    say "using Redis at STRATA_REDIS_URL=$STRATA_REDIS_URL (managed by you)"
    return
  fi
  if redis_up; then say "Redis is running on 127.0.0.1:6379"; return; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    say "redis-server not found: installing Debian's redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  say "starting redis-server on 127.0.0.1:6379"
  mkdir -p /tmp/strata-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/strata-redis --logfile /tmp/strata-redis/redis.log
  for _ in $(seq 50); do redis_up && return; sleep 0.1; done
  echo "Redis did not come up; see /tmp/strata-redis/redis.log" >&2
  exit 1
}

# PostgreSQL on 127.0.0.1:$PG_PORT with trust auth and a `test` database. If nothing listens there, a private
# cluster is created in /tmp/strata-pg (installing Debian's postgresql if needed) and started with wal_level=logical.
PG_PORT="${STRATA_PG_PORT:-5432}"
pg_up() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PG_PORT" 2>/dev/null
}

need_postgres() {
  if [ -n "${STRATA_PG_URL:-}" ]; then
    say "using PostgreSQL at STRATA_PG_URL=$STRATA_PG_URL (managed by you)"
    export STRATA_PG_URL_MANAGED=1
    return
  fi
  export STRATA_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/test"
  if pg_up; then say "PostgreSQL is running on 127.0.0.1:$PG_PORT"; return; fi
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "PostgreSQL not found: installing Debian's postgresql"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local bin dir=/tmp/strata-pg-$PG_PORT
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  if [ ! -s "$dir/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster in $dir"
    mkdir -p "$dir" && [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir" -A trust -U postgres >/dev/null
  fi
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c wal_level=logical -k /tmp" start >/dev/null
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres test 2>/dev/null || true
  pg_up || { echo "PostgreSQL did not come up; see $dir/log" >&2; exit 1; }
}

# Logical replication (the CDC consumer) needs wal_level=logical and a replication line in pg_hba.conf. On a server
# this script did not start, both are set here (ALTER SYSTEM, then a restart) when missing; with STRATA_PG_URL set,
# that is left to you.
pg_sql() { psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -d test -c "$1"; }
need_logical_replication() {
  [ -n "${STRATA_PG_URL_MANAGED:-}" ] && return
  if ! command -v psql >/dev/null 2>&1; then
    say "psql not found: installing Debian's postgresql-client"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
  fi
  local hba changed=
  hba=$(pg_sql "show hba_file")
  if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]' "$hba"; then
    say "allowing replication connections from 127.0.0.1 in $hba"
    printf 'host replication all 127.0.0.1/32 trust\n' >>"$hba"
    pg_sql "select pg_reload_conf()" >/dev/null
  fi
  if [ "$(pg_sql "show wal_level")" != logical ]; then
    say "PostgreSQL has wal_level=$(pg_sql "show wal_level"): setting wal_level=logical and restarting it"
    pg_sql "alter system set wal_level = logical" >/dev/null
    local dir owner
    dir=$(pg_sql "show data_directory")
    owner=$(stat -c %U "$dir")
    if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p { found = 1 } END { exit !found }'; then
      read -r ver name < <(pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }')
      pg_ctlcluster "$ver" "$name" restart
    else
      local bin
      bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
      runuser -u "$owner" -- "$bin/pg_ctl" -D "$dir" -w -m fast restart >/dev/null
    fi
    changed=1
  fi
  if [ -n "$changed" ]; then
    for _ in $(seq 100); do pg_sql "select 1" >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  [ "$(pg_sql "show wal_level")" = logical ] || { echo "could not set wal_level=logical" >&2; exit 1; }
  # Slots left behind by an interrupted earlier run hold WAL forever: drop the inactive test ones.
  pg_sql "select pg_drop_replication_slot(slot_name) from pg_replication_slots
          where slot_name like 'strata\_t\_%' and not active" >/dev/null
}

# nginx for the edge-tier benchmarks beside proxy_cache (strata-bench proxy writes its own config and runs its own
# nginx on a free port; the system service is not used).
need_nginx() {
  if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then return; fi
  say "nginx not found: installing Debian's nginx (for strata bench proxy)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
}

# Headless Chromium for the dashboard test.
need_chromium() {
  for c in chromium chromium-browser google-chrome; do command -v "$c" >/dev/null 2>&1 && return; done
  say "chromium not found: installing Debian's chromium (for the dashboard browser test)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# Runs the README's curl tour (between the tour markers) against a fresh embedded-default server on :8700 (with
# its proxy on :8780 in front of the tour's origin on :8000, and the gateway act's server on :8701 with its REST
# endpoint on :8001) and checks that each step answered as the README says.
readme_tour() {
  local dir out pid
  dir=$(mktemp -d /tmp/strata-tour.XXXXXX)
  for port in 8700 8780 8000 8701 8001; do
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
      echo "port $port is taken: the README tour needs it" >&2; exit 1
    fi
  done
  # The debug binary `cargo test` built: the tour checks behaviour, not speed, and needs no extra build.
  target/debug/strata serve --data-dir "$dir/data" --proxy-origin http://127.0.0.1:8000 >/dev/null 2>"$dir/server.log" &
  pid=$!
  trap 'kill '"$pid"' 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q "strata listening" "$dir/server.log" && break; sleep 0.1; done
  grep -q "strata listening" "$dir/server.log" || { cat "$dir/server.log" >&2; exit 1; }
  sed -n '/<!-- tour:start -->/,/<!-- tour:end -->/p' README.md | sed '1,2d;$d' | sed '$d' >"$dir/tour.sh"
  out=$(STRATA=target/debug/strata bash -e "$dir/tour.sh" 2>&1) || { echo "$out" >&2; exit 1; }
  for want in 'cache-status: strata; fwd=miss; stored' 'cache-status: strata; hit' '"write":"through"' \
              'etag: "v2"' '"name":"Product 42"' '"name":"OLED TV"' '"write":"behind"' '"9999":null' \
              '"found":1000' 'unknown_namespace' 'colour' 'strata_hits_total' 'ready' '"openapi":"3.1.0"' \
              'cache-status: Strata; fwd=uri-miss; fwd-status=200; stored' 'HTTP/1.1 304' \
              'detail="stale-while-revalidate"' 'strata_proxy_requests_total' '"purged":{"tag":"product:42"}' \
              'after the purge: cache-status: Strata; fwd=uri-miss' 'after the purge: cache-status: strata; fwd=miss' \
              'after the write: cache-status: Strata; fwd=uri-miss' '"soft":true' 'surrogate-key: product product:7' \
              'HTTP/1.1 304' 'max-age=31536000, immutable' '"name":"Ada"' 'HTTP/1.1 429' \
              'ratelimit-policy: "per_client";q=2;w=60' 'retry-after:' 'detail=stale-overloaded' \
              'HTTP/1.1 503' '"error":"overloaded"' 'users/2 (no value, waited for the source): 504'; do
    grep -qiF -- "$want" <<<"$out" || { echo "$out" >&2; echo "README tour: expected output containing: $want" >&2; exit 1; }
  done
  kill -TERM "$pid" && wait "$pid" || { cat "$dir/server.log" >&2; echo "strata did not shut down cleanly" >&2; exit 1; }
  trap - EXIT
  rm -rf "$dir"
  echo "README tour: every step answered as written"
}

# Runs schemathesis (pinned; installed from PyPI into a venv under target/) against /openapi.json of a fresh
# embedded-default server with a token on a free port, with every check on and a bounded number of examples per
# operation: no 5xx on any input, every answer as documented (status, content type, schema). Any finding fails.
schemathesis_api() {
  local venv="$PWD/target/schemathesis-venv" dir port pid rc=0
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF 4.32.5; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv" && python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet 'schemathesis==4.32.5'
  fi
  dir=$(mktemp -d /tmp/strata-schemathesis.XXXXXX)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  target/debug/strata serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --token st-token \
    >/dev/null 2>"$dir/server.log" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  # From $dir: schemathesis keeps its example database in ./.schemathesis.
  (cd "$dir" && "$venv/bin/schemathesis" --config-file "$OLDPWD/scripts/schemathesis.toml" run \
    "http://127.0.0.1:$port/openapi.json" --checks all -H 'Authorization: Bearer st-token' --max-examples 20 \
    --seed 1 --no-color --report-dir "$dir/report") >"$dir/out.txt" 2>&1 || rc=$?
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then cat "$dir/out.txt" >&2; echo "schemathesis found problems (above)" >&2; exit 1; fi
  grep -E '^Test cases|passed|warning' "$dir/out.txt" | tail -2
  rm -rf "$dir"
}

need_cargo
say "toolchain: $(cargo --version)"
need_redis
need_postgres
need_logical_replication
need_chromium
need_nginx

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo test"
cargo test --workspace --quiet 2>&1 | tee target/test-output.txt
# Fail loudly if the run executed no tests at all.
grep -Eq 'test result: ok\. [1-9][0-9]* passed' target/test-output.txt

say "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

say "scenario smoke runs (release)"
cargo build --release --quiet -p strata-bench -p strata-server --bins --examples

say "the README's curl tour"
readme_tour
say "schemathesis against /openapi.json"; schemathesis_api

say "strata bench api (smoke, debug binary: the figures are not meaningful here)"
line=$(target/debug/strata bench api --seconds 1 --budget-mib 16 --connections 4)
echo "$line"
echo "$line" | grep -q ' non_hits=0 ' || { echo "bench api: some reads were not L1 hits" >&2; exit 1; }

say "strata bench proxy and proxy-stampede (smoke: one 1-second round; the figures are not meaningful here)"
line=$(target/release/strata bench proxy --seconds 1 --rounds 1)
echo "$line"
echo "$line" | grep -Eq '^proxy hit_rps=[0-9]+ nginx_hit_rps=[0-9]+ ratio=[0-9.]+ p99_ms=[0-9.]+ nginx_p99_ms=[0-9.]+$' ||
  { echo "bench proxy: unexpected report line" >&2; exit 1; }
line=$(target/release/strata bench proxy-stampede)
echo "$line"
echo "$line" | grep -Eq '^proxy_stampede requests=10000 origin_requests=1 nginx_origin_requests=[0-9]+$' ||
  { echo "bench proxy-stampede: expected origin_requests=1" >&2; exit 1; }

REDIS_URL="${STRATA_REDIS_URL:-redis://127.0.0.1:6379}"
say "strata bench purge (smoke: 3 nodes, fewer objects and purges than the recorded run)"
line=$(target/release/strata bench purge --strata target/release/strata --redis "$REDIS_URL" --objects 200 --purges 50 --soft-objects 20 --clients 8)
echo "$line"
echo "$line" | grep -Eq '^purge nodes=3 purges=50 p50_ms=[0-9.]+ p99_ms=[0-9.]+ cdn_p99_ms=[0-9.]+ soft_origin_requests_per_object=[0-9.]+$' ||
  { echo "bench purge: unexpected report line" >&2; exit 1; }
p99=$(echo "$line" | sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p')
awk -v p="$p99" 'BEGIN { exit !(p < 1000) }' || { echo "purge: p99_ms=$p99, expected < 1000" >&2; exit 1; }

say "strata bench ratelimit (smoke: 4 nodes on one Redis, every algorithm within 2 % of its policy)"
lines=$(target/release/strata bench ratelimit --redis "$REDIS_URL" --limit 200 --windows 2 --cost-samples 300)
echo "$lines"
[ "$(echo "$lines" | grep -cE '^ratelimit algorithm=[a-z_]+ nodes=4 accuracy=[0-9.]+ cost_us=[0-9.]+ incr_us=[0-9.]+ ')" = 5 ] ||
  { echo "bench ratelimit: expected five report lines" >&2; exit 1; }
echo "$lines" | sed -n 's/.* accuracy=\([0-9.]*\) .*/\1/p' |
  awk '{ if ($1 < 0.98 || $1 > 1.02) { print "ratelimit: accuracy " $1 " is off by more than 2 %" > "/dev/stderr"; bad = 1 } } END { exit bad }' ||
  exit 1

say "strata bench slow-dependency (smoke: the healthy namespace unharmed, no answer past the hard timeout)"
line=$(target/release/strata bench slow-dependency --before 3 --during 4 --after 2)
echo "$line"
field() { echo "$line" | sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
awk -v r="$(field healthy_p99_ratio)" -v e="$(field healthy_errors_during)" -v s="$(field sick_max_ms)" \
    -v h="$(field hard_timeout_ms)" -v n="$(field naive_sick_max_ms)" 'BEGIN {
  if (r == "" || r > 1.5) { print "slow-dependency: healthy p99 grew " r "x during the outage (goal <= 1.5)" > "/dev/stderr"; exit 1 }
  if (e != 0) { print "slow-dependency: the healthy namespace failed " e " requests during the outage" > "/dev/stderr"; exit 1 }
  if (s == "" || s > h + 100) { print "slow-dependency: a sick answer took " s " ms, past the hard timeout " h " ms" > "/dev/stderr"; exit 1 }
  if (n < 10000) { print "slow-dependency: the naive run answered in " n " ms: it did not see the outage" > "/dev/stderr"; exit 1 }
}' || exit 1

line=$(target/release/strata-bench stampede)
echo "$line"
echo "$line" | grep -q ' loader_calls=1 ' || { echo "stampede: expected loader_calls=1" >&2; exit 1; }
target/release/strata-bench xfetch --seconds 20
target/release/strata-bench l2 --samples 2000 --redis "$REDIS_URL"
target/release/strata-bench invalidation --nodes 4 --samples 200 --redis "$REDIS_URL"
line=$(target/release/strata-bench stampede --nodes 4 --redis "$REDIS_URL")
echo "$line"
echo "$line" | grep -q ' source_loads=1 ' || { echo "stampede --nodes 4: expected source_loads=1" >&2; exit 1; }
line=$(target/release/strata-bench hotkey --nodes 4 --redis "$REDIS_URL")
echo "$line"
pct=$(echo "$line" | sed -n 's/.*reduction_pct=\([0-9.]*\).*/\1/p')
awk -v p="$pct" 'BEGIN { exit !(p >= 99.9) }' || { echo "hotkey: reduction_pct=$pct, expected >= 99.9" >&2; exit 1; }
line=$(target/release/strata-bench write-behind-crash --cycles 50)
echo "$line"
echo "$line" | grep -q ' lost_acked_writes=0$' || { echo "write-behind-crash: acknowledged writes were lost" >&2; exit 1; }
line=$(target/release/strata-bench writes --seconds 3 --pg "$STRATA_PG_URL")
echo "$line"
lag=$(echo "$line" | sed -n 's/.*behind_lag_p99_ms=\([0-9.]*\).*/\1/p')
awk -v p="$lag" 'BEGIN { exit !(p < 1000) }' || { echo "writes: behind_lag_p99_ms=$lag, expected < 1000" >&2; exit 1; }
line=$(target/release/strata-bench cdc --nodes 4 --samples 500 --redis "$REDIS_URL" --pg "$STRATA_PG_URL")
echo "$line"
p99=$(echo "$line" | sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p')
awk -v p="$p99" 'BEGIN { exit !(p < 100) }' || { echo "cdc: p99_ms=$p99, expected < 100" >&2; exit 1; }
target/release/examples/black_friday --requests 2000

# The consistency guarantee, from the outside: three strata serve processes, API and SQL writers, readers on every
# node, with Redis kill -9 + restart, a node kill -9, the CDC node kill -9 and a SIGSTOP. No read may be stale
# after the documented bound (750 ms, so 1 s is past it), and no acknowledged write may be missing.
out=$(target/release/strata bench consistency --seconds 8 --faults --strata target/release/strata 2>/tmp/strata-consistency.log)
echo "$out"
for path in api sql; do
  line=$(grep "path=$path " <<<"$out") || { cat /tmp/strata-consistency.log >&2; echo "consistency: no line for path=$path" >&2; exit 1; }
  grep -q ' stale_after_1s=0 ' <<<"$line" && grep -q ' acked_missing=0$' <<<"$line" ||
    { cat /tmp/strata-consistency.log >&2; echo "consistency: path=$path broke the guarantee" >&2; exit 1; }
done

say "all checks passed"
