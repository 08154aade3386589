# Locates, or installs and starts, the servers the tests need. Sourced by scripts/test and
# scripts/bench; each function exports the URL the tests read, or exits with what to do.
#
#   REDIS_URL           default redis://127.0.0.1:6379
#   DATABASE_URL        default postgres://postgres@127.0.0.1:5432/test
#   REDIS_CLUSTER_URLS  default redis://127.0.0.1:7001,...:7002,...:7003 (started by scripts/redis-cluster)
#   PGBOUNCER_URL       default postgres://postgres@127.0.0.1:6432/test (PgBouncer, transaction pooling,
#                       in front of the default PostgreSQL; started by ensure_pgbouncer)
#   PGBOUNCER_IGNORING_URL  default postgres://postgres@127.0.0.1:6433/test (the same, ignoring the
#                       startup parameters extra_float_digits and options)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "missing $*; install it (Debian: apt-get install $*) or point the tests at a server (see README)"
  fi
  say "installing $* with apt-get"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
  command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  if redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; then
    return
  fi
  if [ "$REDIS_URL" != "redis://127.0.0.1:6379" ]; then
    die "Redis at REDIS_URL=$REDIS_URL does not answer PING"
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting redis-server on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/redis-6379.log
  for _ in $(seq 50); do
    redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG && return
    sleep 0.1
  done
  die "redis-server did not come up on 127.0.0.1:6379 (see /tmp/redis-6379.log)"
}

ensure_redis_cluster() {
  export REDIS_CLUSTER_URLS="${REDIS_CLUSTER_URLS:-redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003}"
  if [ "$REDIS_CLUSTER_URLS" = "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003" ]; then
    scripts/redis-cluster start >&2
  fi
}

pg_ready() {
  psql "$DATABASE_URL" -XAtqc 'select 1' >/dev/null 2>&1
}

ensure_postgres() {
  export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
  command -v psql >/dev/null || apt_install postgresql-client
  pg_ready && return
  if [ "$DATABASE_URL" != "postgres://postgres@127.0.0.1:5432/test" ]; then
    die "PostgreSQL at DATABASE_URL=$DATABASE_URL does not answer"
  fi
  # A local server: start it, or install one, with trust auth on loopback for the tests.
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    say "allowing trust auth for loopback connections in $hba (test machine)"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
  for _ in $(seq 100); do
    if psql "postgres://postgres@127.0.0.1:5432/postgres" -XAtqc 'select 1' >/dev/null 2>&1; then
      break
    fi
    sleep 0.2
  done
  psql "postgres://postgres@127.0.0.1:5432/postgres" -XAtqc \
    "select 1 from pg_database where datname = 'test'" | grep -q 1 ||
    psql "postgres://postgres@127.0.0.1:5432/postgres" -Xqc 'create database test' >/dev/null
  pg_ready || die "PostgreSQL did not come up on 127.0.0.1:5432"
}

pgbouncer_ready() {
  psql "$1" -XAtqc 'select 1' >/dev/null 2>&1
}

# Starts PgBouncer NAME on 127.0.0.1:PORT (transaction pooling, in front of the default local
# PostgreSQL), its configuration, log and pid file in $PGBOUNCER_DIR/NAME; EXTRA is appended
# to its [pgbouncer] section.
start_pgbouncer() {
  local name="$1" port="$2" extra="$3" url="postgres://postgres@127.0.0.1:$2/test"
  local dir="${PGBOUNCER_DIR:-/tmp/tip-pgbouncer}/$name" user=""
  mkdir -p "$dir"
  # PgBouncer refuses to run as root: run it as the PostgreSQL server's user.
  if [ "$(id -u)" -eq 0 ]; then
    user=postgres
    id "$user" >/dev/null 2>&1 || die "running as root, PgBouncer needs an unprivileged user; there is no user '$user'"
  fi
  # With auth_type = trust the user must still be listed in the auth file.
  printf '"postgres" ""\n' >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
; More than one server connection per pool, so consecutive transactions of one client
; really do run on different server connections.
default_pool_size = 4
max_client_conn = 500
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
$extra
INI
  [ -n "$user" ] && chown -R "$user" "$dir"
  # One of ours that stopped answering, or a stale pid file: out of the way.
  if [ -f "$dir/pgbouncer.pid" ] && kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; then
    kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$dir/pgbouncer.pid"
  say "starting $(pgbouncer --version | head -n 1) ($name) on 127.0.0.1:$port (transaction pooling)"
  if [ -n "$user" ]; then
    pgbouncer -d -u "$user" "$dir/pgbouncer.ini" || die "pgbouncer did not start (see $dir/pgbouncer.log)"
  else
    pgbouncer -d "$dir/pgbouncer.ini" || die "pgbouncer did not start (see $dir/pgbouncer.log)"
  fi
  for _ in $(seq 50); do
    pgbouncer_ready "$url" && return
    sleep 0.1
  done
  die "PgBouncer ($name) did not come up on 127.0.0.1:$port (see $dir/pgbouncer.log)"
}

# PgBouncer in transaction pooling mode, twice, in front of the default local PostgreSQL
# (call ensure_postgres first):
# - PGBOUNCER_URL (127.0.0.1:6432): as configured out of the box. Debian 12 ships 1.18,
#   which has no protocol-level prepared statements and refuses the startup parameters it
#   does not know (sqlx's extra_float_digits, options).
# - PGBOUNCER_IGNORING_URL (127.0.0.1:6433): with `ignore_startup_parameters =
#   extra_float_digits, options`, the usual advice for sqlx, which drops those parameters.
ensure_pgbouncer() {
  export PGBOUNCER_URL="${PGBOUNCER_URL:-postgres://postgres@127.0.0.1:6432/test}"
  export PGBOUNCER_IGNORING_URL="${PGBOUNCER_IGNORING_URL:-postgres://postgres@127.0.0.1:6433/test}"
  command -v psql >/dev/null || apt_install postgresql-client
  pgbouncer_ready "$PGBOUNCER_URL" && pgbouncer_ready "$PGBOUNCER_IGNORING_URL" && return
  local default=1
  [ "$PGBOUNCER_URL" = "postgres://postgres@127.0.0.1:6432/test" ] || default=0
  [ "$PGBOUNCER_IGNORING_URL" = "postgres://postgres@127.0.0.1:6433/test" ] || default=0
  if [ "$default" -eq 0 ]; then
    pgbouncer_ready "$PGBOUNCER_URL" || die "PgBouncer at PGBOUNCER_URL=$PGBOUNCER_URL does not answer"
    die "PgBouncer at PGBOUNCER_IGNORING_URL=$PGBOUNCER_IGNORING_URL does not answer"
  fi
  if [ "$DATABASE_URL" != "postgres://postgres@127.0.0.1:5432/test" ]; then
    die "PgBouncer is only started in front of the default local PostgreSQL; with DATABASE_URL=$DATABASE_URL, point PGBOUNCER_URL (and PGBOUNCER_IGNORING_URL, with ignore_startup_parameters = extra_float_digits, options) at PgBouncers (pool_mode = transaction) in front of that server"
  fi
  command -v pgbouncer >/dev/null || apt_install pgbouncer
  command -v pgbouncer >/dev/null || die "pgbouncer not found after installing it; install PgBouncer or set PGBOUNCER_URL and PGBOUNCER_IGNORING_URL"
  pgbouncer_ready "$PGBOUNCER_URL" || start_pgbouncer default 6432 ""
  pgbouncer_ready "$PGBOUNCER_IGNORING_URL" ||
    start_pgbouncer ignoring 6433 "ignore_startup_parameters = extra_float_digits, options"
}

# Command-line tools the tests run: the openssl CLI makes the Redis TLS tests' certificates.
ensure_tools() {
  command -v openssl >/dev/null || apt_install openssl
  command -v openssl >/dev/null || die "openssl not found: install it (Debian: apt-get install openssl)"
}
