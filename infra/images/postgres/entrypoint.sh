#!/bin/sh
# First start: create the cluster in $PGDATA (superuser password from
# POSTGRES_PASSWORD, scram-sha-256 for every TCP connection) and, for each of
# PREFECT and MLFLOW, a role and a database named by <X>_DB_USER, <X>_DB_PASSWORD
# and <X>_DB_NAME. Later starts find the cluster and only run it. Passwords come
# from the environment only and are fed to psql on stdin, never written to disk.
# Listens on POSTGRES_LISTEN (default 127.0.0.1: the stack runs on host networking)
# and PGPORT.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${PGPORT:=5432}"
: "${POSTGRES_LISTEN:=127.0.0.1}"

need() { eval "v=\${$1:-}"; [ -n "$v" ] || { echo "autopoiesis-postgres: $1 is not set" >&2; exit 1; }; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  need POSTGRES_PASSWORD
  for x in PREFECT MLFLOW; do need ${x}_DB_USER; need ${x}_DB_PASSWORD; need ${x}_DB_NAME; done
  echo "autopoiesis-postgres: initialising $PGDATA"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  # Local socket only while the databases are made.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k /var/run/postgresql" -w start >/dev/null
  for x in PREFECT MLFLOW; do
    eval "user=\$${x}_DB_USER; pass=\$${x}_DB_PASSWORD; db=\$${x}_DB_NAME"
    # Values reach psql through its environment (\getenv), not its command line, and
    # psql quotes them (:'pass' a literal, :"user" an identifier).
    AP_USER="$user" AP_PASS="$pass" AP_DB="$db" \
      psql -v ON_ERROR_STOP=1 -q -h /var/run/postgresql -U postgres -d postgres <<'SQL'
\getenv user AP_USER
\getenv pass AP_PASS
\getenv db AP_DB
CREATE ROLE :"user" LOGIN PASSWORD :'pass';
CREATE DATABASE :"db" OWNER :"user";
SQL
    echo "autopoiesis-postgres: database $db for role $user"
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi

exec postgres -D "$PGDATA" -c listen_addresses="$POSTGRES_LISTEN" -p "$PGPORT" \
  -k /var/run/postgresql -c max_connections="${POSTGRES_MAX_CONNECTIONS:-200}"
