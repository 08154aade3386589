# Locates, or installs and starts, the servers the tests need. Sourced by scripts/test and
# scripts/bench; each function exports the URL the tests read, or exits with what to do.
#
#   REDIS_URL           default redis://127.0.0.1:6379
#   DATABASE_URL        default postgres://postgres@127.0.0.1:5432/test
#   REDIS_CLUSTER_URLS  default redis://127.0.0.1:7001,...:7002,...:7003 (started by scripts/redis-cluster)

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
