# shellcheck shell=bash
#
# Shared helpers for scripts/test and scripts/up. Source it; do not run it.
#
#   ensure_cargo     cargo must exist; exports CARGO_TARGET_DIR (shared cache by default)
#   ensure_postgres  exports DATABASE_URL (role/database `switchyard`, with CREATEDB)
#   ensure_nats      exports NATS_URL (a nats-server with JetStream)
#   ensure_example_python  exports SWITCHYARD_PYTHON (a venv with the Python example's
#                    requirements, docs/examples/python-agent, for its e2e test)
#
# ensure_postgres and ensure_nats install the Debian packages when missing, reuse a
# server that already runs on the standard port, and otherwise start a private one
# under .switchyard/ in the repository. They also keep .switchyard/env up to date
# (`source .switchyard/env` gives a shell the same DATABASE_URL and NATS_URL) and make
# sure .gitignore lists .switchyard/.
#
# Setting SWITCHYARD_FORCE_LOCAL_SERVICES=1 skips the servers on the standard ports and
# always uses private ones (for testing that path). stop_private_services stops the
# private ones again. Nothing here ever stops or restarts a server it did not start.
#
# Every function is idempotent and works from any current directory.

# The repository root, from this file's own location (scripts/lib.sh).
SWITCHYARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SWITCHYARD_STATE="$SWITCHYARD_ROOT/.switchyard"

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

# Progress line on stderr: `==> postgres: using 127.0.0.1:5432`.
sy_log() { printf '==> %s\n' "$*" >&2; }
sy_warn() { printf '==> warning: %s\n' "$*" >&2; }
# Fatal error: message on stderr, exit the script.
sy_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

_sy_is_root() { [[ $(id -u) -eq 0 ]]; }

# Run a command as root (directly, or through sudo).
_sy_as_root() {
    if _sy_is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        sy_die "need root for: $* (not root, and sudo is not installed)"
    fi
}

# Run a command as the `postgres` OS user (runuser when root, sudo otherwise).
_sy_as_postgres() {
    if [[ $(id -un) == postgres ]]; then
        "$@"
    elif _sy_is_root; then
        # From /, so that tools do not complain about an unreadable current directory.
        (cd / && runuser -u postgres -- "$@")
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n -u postgres -- "$@"
    else
        return 1
    fi
}

# Install Debian packages; `apt-get update` runs at most once per script run.
_SY_APT_UPDATED=0
_sy_apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        sy_die "cannot install $* automatically: apt-get not found; install it yourself"
    if [[ $_SY_APT_UPDATED -eq 0 ]]; then
        sy_log "apt-get update"
        # Not fatal: the package lists already on the machine may do.
        _sy_as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 ||
            sy_warn "apt-get update failed; trying the install with the package lists at hand"
        _SY_APT_UPDATED=1
    fi
    sy_log "apt-get install -y $*"
    _sy_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >&2
}

# Does anything accept TCP connections on 127.0.0.1:PORT?
_sy_port_busy() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# First port from START (trying COUNT ports, default 100) on which nothing listens.
_sy_free_port() {
    local port=$1 last=$(($1 + ${2:-100}))
    while ((port < last)); do
        if ! _sy_port_busy "$port"; then
            echo "$port"
            return 0
        fi
        port=$((port + 1))
    done
    sy_die "no free port in $1..$((last - 1)) on 127.0.0.1"
}

# Is PID a live process whose command line mentions NAME?
_sy_pid_is() {
    local pid=$1 name=$2 cmdline
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ $cmdline == *"$name"* ]]
}

# Create .switchyard/ and make sure .gitignore ignores it (and /target).
_sy_state_dir() {
    mkdir -p "$SWITCHYARD_STATE"
    local gitignore="$SWITCHYARD_ROOT/.gitignore" line
    if [[ ! -e $gitignore ]]; then
        printf '%s\n' '.switchyard/' '/target' >"$gitignore"
        return 0
    fi
    for line in '.switchyard/' '/target'; do
        if ! grep -qxF -- "$line" "$gitignore"; then
            # Add the missing newline at the end of the file first, if any.
            if [[ -n $(tail -c 1 "$gitignore") ]]; then
                echo >>"$gitignore"
            fi
            echo "$line" >>"$gitignore"
        fi
    done
}

# Write .switchyard/env with whichever of DATABASE_URL and NATS_URL are set.
sy_write_env_file() {
    _sy_state_dir
    local file="$SWITCHYARD_STATE/env" tmp var
    tmp="$(mktemp "$file.XXXXXX")"
    {
        echo "# Written by scripts/lib.sh; use it with: source .switchyard/env"
        for var in DATABASE_URL NATS_URL; do
            if [[ -n ${!var:-} ]]; then
                printf 'export %s=%q\n' "$var" "${!var}"
            fi
        done
    } >"$tmp"
    mv -f "$tmp" "$file"
}

# ---------------------------------------------------------------------------
# cargo
# ---------------------------------------------------------------------------

# CARGO_TARGET_DIR defaults to one directory shared by every clone of the
# repository, so that repeated CI runs in fresh clones reuse the build.
sy_default_target_dir() {
    if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
        CARGO_TARGET_DIR="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/switchyard/target"
    fi
    export CARGO_TARGET_DIR
}

ensure_cargo() {
    # A rustup install that is not on PATH yet (a non-login shell, say).
    if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-${HOME:-/nonexistent}/.cargo}/bin/cargo ]]; then
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1 ||
        sy_die "cargo not found: install the Rust toolchain (https://rustup.rs) and make sure cargo is on PATH"
    sy_default_target_dir
    sy_log "cargo: $(cargo --version), CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
}

# A venv under the shared cache with docs/examples/python-agent/requirements.txt installed
# (from PyPI, once per change of the file); exports SWITCHYARD_PYTHON, its python.
# Headless Chromium and its WebDriver, for the dashboard's browser tests: Debian's
# `chromium` and `chromium-driver`, installed when either is missing.
ensure_chromium() {
    if ! command -v chromedriver >/dev/null 2>&1 ||
        ! { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
        sy_log "chromium: not installed, installing Debian's chromium and chromium-driver"
        _sy_apt_install chromium chromium-driver
    fi
    command -v chromedriver >/dev/null 2>&1 ||
        sy_die "chromium: chromedriver still not found after the install"
    sy_log "chromium: $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
}

ensure_example_python() {
    local cache="${SWITCHYARD_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/switchyard}"
    local venv="$cache/example-venv"
    local requirements="$SWITCHYARD_ROOT/docs/examples/python-agent/requirements.txt"
    command -v python3 >/dev/null 2>&1 ||
        sy_die "python3 not found: the external-agent example needs it (apt-get install python3 python3-venv)"
    if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
        sy_log "python: installing the example agent's requirements into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" || sy_die "python3 -m venv failed (apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" ||
            sy_die "pip could not install $requirements"
        cp "$requirements" "$venv/requirements.txt"
    fi
    SWITCHYARD_PYTHON="$venv/bin/python"
    export SWITCHYARD_PYTHON
    sy_log "python: $("$SWITCHYARD_PYTHON" --version) with nats-py ($venv)"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

SY_PG_ROLE=switchyard
SY_PG_PASSWORD=switchyard
SY_PG_DB=switchyard
SY_PG_PORT=5432 # the standard port
SY_PG_PRIVATE_PORT=55432

# The psql command that reaches the server as superuser; set by _sy_pg_find_admin.
_SY_PG_ADMIN=()

_sy_psql() { PGCONNECT_TIMEOUT=5 psql -X -w -v ON_ERROR_STOP=1 "$@"; }

# bin directory of the newest installed PostgreSQL server (or of VERSION).
_sy_pg_bindir() {
    local dir
    if [[ -n ${1:-} ]]; then
        dir="/usr/lib/postgresql/$1/bin"
    else
        dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    fi
    [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl ]] || return 1
    echo "$dir"
}

# Install the Debian packages if the client or the server is missing.
_sy_pg_install() {
    if command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 &&
        _sy_pg_bindir >/dev/null; then
        return 0
    fi
    sy_log "postgres: not installed, installing the Debian package"
    _sy_apt_install postgresql
    _sy_pg_bindir >/dev/null || sy_die "postgres: installed, but no server found in /usr/lib/postgresql/*/bin"
}

# Wait (bounded) until the server on 127.0.0.1:PORT accepts connections.
_sy_pg_wait() {
    local port=$1 what=$2 i
    for ((i = 0; i < 60; i++)); do
        pg_isready -q -h 127.0.0.1 -p "$port" -t 1 && return 0
        sleep 0.5
    done
    sy_warn "postgres: $what on 127.0.0.1:$port did not accept connections within 30s"
    return 1
}

# URL of the switchyard role's database on PORT.
_sy_pg_url() { echo "postgres://$SY_PG_ROLE:$SY_PG_PASSWORD@127.0.0.1:$1/$SY_PG_DB"; }

# Can the switchyard role log in on PORT, and may it create databases?
_sy_pg_role_ok() {
    [[ $(_sy_psql "$(_sy_pg_url "$1")" -Atc \
        'select rolcreatedb from pg_roles where rolname = current_user' 2>/dev/null) == t ]]
}

# Find a way to reach the server on 127.0.0.1:PORT as superuser: TCP as `postgres`
# (trust auth), else the local socket as the `postgres` OS user (peer auth).
_sy_pg_find_admin() {
    local port=$1
    _SY_PG_ADMIN=(_sy_psql -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    "${_SY_PG_ADMIN[@]}" -Atc 'select 1' >/dev/null 2>&1 && return 0
    _SY_PG_ADMIN=(_sy_as_postgres psql -X -w -v ON_ERROR_STOP=1 -p "$port" -d postgres)
    "${_SY_PG_ADMIN[@]}" -Atc 'select 1' >/dev/null 2>&1 && return 0
    _SY_PG_ADMIN=()
    return 1
}

# Create (or update) the switchyard role and database, using _SY_PG_ADMIN.
_sy_pg_create_role_and_db() {
    "${_SY_PG_ADMIN[@]}" -q >/dev/null <<SQL
SELECT 'CREATE ROLE $SY_PG_ROLE'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$SY_PG_ROLE') \gexec
ALTER ROLE $SY_PG_ROLE WITH LOGIN CREATEDB PASSWORD '$SY_PG_PASSWORD';
SELECT 'CREATE DATABASE $SY_PG_DB OWNER $SY_PG_ROLE'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$SY_PG_DB') \gexec
ALTER DATABASE $SY_PG_DB OWNER TO $SY_PG_ROLE;
SQL
}

# Set up the role and database on 127.0.0.1:PORT and check that they work.
# Returns non-zero (with a warning) when that server cannot be used.
_sy_pg_setup_on() {
    local port=$1
    if _sy_pg_role_ok "$port"; then
        return 0
    fi
    if [[ ${#_SY_PG_ADMIN[@]} -eq 0 ]] && ! _sy_pg_find_admin "$port"; then
        sy_warn "postgres: cannot connect to 127.0.0.1:$port as superuser (neither TCP as postgres nor the postgres OS user)"
        return 1
    fi
    if ! _sy_pg_create_role_and_db; then
        sy_warn "postgres: could not create role/database $SY_PG_ROLE on 127.0.0.1:$port"
        return 1
    fi
    if ! _sy_pg_role_ok "$port"; then
        sy_warn "postgres: role $SY_PG_ROLE cannot log in with its password on 127.0.0.1:$port (pg_hba.conf?)"
        return 1
    fi
}

# Start the Debian cluster that is configured for the standard port, if there is one.
_sy_pg_start_debian_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local version name port _
    while read -r version name port _; do
        [[ $port == "$SY_PG_PORT" && $name == main ]] || continue
        sy_log "postgres: starting the Debian cluster $version/main"
        if ! _sy_as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2; then
            sy_warn "postgres: pg_ctlcluster $version main start failed"
            return 1
        fi
        _sy_pg_wait "$SY_PG_PORT" "cluster $version/main"
        return
    done < <(pg_lsclusters --no-header 2>/dev/null)
    return 1
}

# Run a command as the owner of the private cluster (postgres when we are root).
_sy_pg_as_owner() {
    if _sy_is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Directory of the private cluster: .switchyard/pg, unless we are root and the
# postgres OS user cannot reach it (a repository under /root, say); then a
# directory under /tmp, with .switchyard/pg a symlink to it.
_sy_pg_private_base() {
    local link="$SWITCHYARD_STATE/pg" base
    if [[ -L $link ]]; then
        readlink -f "$link"
        return
    fi
    mkdir -p "$link"
    if ! _sy_is_root; then
        echo "$link"
        return
    fi
    chown postgres: "$link"
    if runuser -u postgres -- test -w "$link"; then
        echo "$link"
        return
    fi
    base="/tmp/switchyard-pg-$(printf '%s' "$SWITCHYARD_ROOT" | cksum | cut -d ' ' -f 1)"
    sy_log "postgres: the postgres user cannot reach $link; keeping the cluster in $base"
    rmdir "$link"
    # Refuse a directory someone else prepared for us.
    if [[ -e $base && (-L $base || $(stat -c %U "$base") != postgres) ]]; then
        sy_die "postgres: $base exists and is not a directory owned by postgres; remove it"
    fi
    install -d -o postgres -g postgres -m 700 "$base"
    ln -s "$base" "$link"
    echo "$base"
}

# Create (once) and start (if stopped) the private cluster; sets PG_PORT.
_sy_pg_start_private() {
    local base data sock log bindir version port pidfile
    base="$(_sy_pg_private_base)"
    data="$base/data"
    log="$base/postgresql.log"
    # Unix sockets have a path limit of 107 bytes; fall back to a short directory.
    sock="$base/run"
    if ((${#sock} > 80)); then
        sock="/tmp/switchyard-pgsock-$(printf '%s' "$base" | cksum | cut -d ' ' -f 1)"
    fi

    if [[ -f $data/PG_VERSION ]]; then
        version="$(cat "$data/PG_VERSION")"
        bindir="$(_sy_pg_bindir "$version")" ||
            sy_die "postgres: $data was made by PostgreSQL $version, which is not installed; remove $base"
    else
        bindir="$(_sy_pg_bindir)" || sy_die "postgres: no server in /usr/lib/postgresql/*/bin"
        sy_log "postgres: creating a private cluster in $data"
        _sy_pg_as_owner "$bindir/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >"$base/initdb.log" 2>&1 ||
            sy_die "postgres: initdb failed, see $base/initdb.log"
        # A throwaway development cluster: speed over durability. Only the owner
        # (and root) can reach the socket directory, so trust on it is safe.
        _sy_pg_as_owner tee -a "$data/postgresql.conf" >/dev/null <<CONF

# Added by scripts/lib.sh (private development cluster)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    fi
    _sy_pg_as_owner mkdir -p -m 700 "$sock"

    pidfile="$data/postmaster.pid"
    if _sy_pg_as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        # Already running (from an earlier run): line 4 of postmaster.pid is the port.
        port="$(sed -n 4p "$pidfile")"
        sy_log "postgres: private cluster already running on port $port"
    else
        # Prefer the port used last time, so that old URLs stay valid.
        port="$(cat "$base/port" 2>/dev/null || echo "$SY_PG_PRIVATE_PORT")"
        if _sy_port_busy "$port"; then
            port="$(_sy_free_port "$SY_PG_PRIVATE_PORT")"
        fi
        sy_log "postgres: starting the private cluster on 127.0.0.1:$port (log: $log)"
        if ! _sy_pg_as_owner "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 60 \
            -o "-p $port" start >/dev/null; then
            tail -n 20 "$log" >&2 || true
            sy_die "postgres: the private cluster did not start (log: $log)"
        fi
        echo "$port" >"$base/port"
    fi
    _sy_pg_wait "$port" "the private cluster" || {
        tail -n 20 "$log" >&2 || true
        sy_die "postgres: the private cluster is not answering (log: $log)"
    }
    _SY_PG_ADMIN=(_sy_psql -h "$sock" -p "$port" -U postgres -d postgres)
    PG_PORT=$port
}

ensure_postgres() {
    if [[ -n ${DATABASE_URL:-} ]]; then
        sy_log "postgres: using DATABASE_URL from the environment"
        export DATABASE_URL
        sy_write_env_file
        return 0
    fi
    _sy_pg_install

    local PG_PORT="" ready=0
    _SY_PG_ADMIN=()
    if [[ ${SWITCHYARD_FORCE_LOCAL_SERVICES:-0} != 1 ]]; then
        # pg_isready: 0 = accepting connections, 1 = starting up, 2 = no answer.
        pg_isready -q -h 127.0.0.1 -p "$SY_PG_PORT" -t 3 || ready=$?
        if [[ $ready -eq 1 ]]; then
            sy_log "postgres: 127.0.0.1:$SY_PG_PORT is starting up; waiting"
            if _sy_pg_wait "$SY_PG_PORT" "the server"; then ready=0; fi
        fi
    fi

    if [[ ${SWITCHYARD_FORCE_LOCAL_SERVICES:-0} == 1 ]]; then
        sy_log "postgres: SWITCHYARD_FORCE_LOCAL_SERVICES=1, not using 127.0.0.1:$SY_PG_PORT"
    elif [[ $ready -eq 0 ]]; then
        if _sy_pg_setup_on "$SY_PG_PORT"; then
            PG_PORT=$SY_PG_PORT
        else
            sy_warn "postgres: 127.0.0.1:$SY_PG_PORT answers but cannot be used; starting a private cluster"
        fi
    elif ! _sy_port_busy "$SY_PG_PORT"; then
        if _sy_pg_start_debian_cluster; then
            if _sy_pg_setup_on "$SY_PG_PORT"; then
                PG_PORT=$SY_PG_PORT
            fi
        fi
    else
        sy_warn "postgres: 127.0.0.1:$SY_PG_PORT is taken by something that is not a usable PostgreSQL"
    fi

    if [[ -z $PG_PORT ]]; then
        _sy_pg_start_private
        _sy_pg_setup_on "$PG_PORT" || sy_die "postgres: could not set up the private cluster"
    fi

    DATABASE_URL="$(_sy_pg_url "$PG_PORT")"
    export DATABASE_URL
    sy_log "postgres: using 127.0.0.1:$PG_PORT (DATABASE_URL=$DATABASE_URL)"
    sy_write_env_file
}

# ---------------------------------------------------------------------------
# NATS (with JetStream)
# ---------------------------------------------------------------------------

SY_NATS_PORT=4222 # the standard port
SY_NATS_PRIVATE_PORT=14222

_sy_nats_bin() {
    command -v nats-server 2>/dev/null && return 0
    [[ -x /usr/sbin/nats-server ]] && echo /usr/sbin/nats-server && return 0
    return 1
}

# The INFO line a NATS server greets with on 127.0.0.1:PORT (empty if none).
_sy_nats_info() {
    # shellcheck disable=SC2016 # $1 and $line are expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 2 line <&3 || true
        printf "%s\n" "$line" | tr -d "\r"
    ' _ "$1" 2>/dev/null || true
}

# 0: a NATS server with JetStream answers on PORT; 1: nothing answers;
# 2: something answers, but it is not NATS or has no JetStream.
_sy_nats_check() {
    local info
    info="$(_sy_nats_info "$1")"
    if [[ $info != 'INFO {'* ]]; then
        if _sy_port_busy "$1"; then return 2; fi
        return 1
    fi
    [[ $info == *'"jetstream":true'* ]] || return 2
}

# Start our own nats-server on PORT (in the background, in its own session so
# that Ctrl-C in a script does not reach it) and wait until it answers.
_sy_nats_start_private() {
    local port=$1 bin store="$SWITCHYARD_STATE/nats" log="$SWITCHYARD_STATE/nats.log"
    local pidfile="$SWITCHYARD_STATE/nats.pid" pid i rc
    bin="$(_sy_nats_bin)"
    mkdir -p "$store"
    sy_log "nats: starting nats-server on 127.0.0.1:$port with JetStream (log: $log)"
    local launcher=()
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    # Keep the previous run's log beside the new one.
    [[ -f $log ]] && mv -f "$log" "$log.old"
    "${launcher[@]}" nohup "$bin" -a 127.0.0.1 -p "$port" -js -sd "$store" \
        >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    echo "$port" >"$SWITCHYARD_STATE/nats.port"
    for ((i = 0; i < 60; i++)); do
        rc=0
        _sy_nats_check "$port" || rc=$?
        [[ $rc -eq 0 ]] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            sy_die "nats: nats-server exited during startup (log: $log)"
        fi
        sleep 0.5
    done
    # Do not leave a half-started server behind.
    kill "$pid" 2>/dev/null || true
    tail -n 20 "$log" >&2 || true
    sy_die "nats: nats-server on 127.0.0.1:$port did not answer with JetStream within 30s (log: $log)"
}

ensure_nats() {
    if [[ -n ${NATS_URL:-} ]]; then
        sy_log "nats: using NATS_URL from the environment"
        export NATS_URL
        sy_write_env_file
        return 0
    fi
    _sy_state_dir
    if ! _sy_nats_bin >/dev/null; then
        sy_log "nats: nats-server not installed, installing the Debian package"
        _sy_apt_install nats-server
        _sy_nats_bin >/dev/null || sy_die "nats: installed, but nats-server not found"
    fi

    # rc: 0 = use the server on the standard port; anything else = do not.
    local port="" rc=1 pid ours=""
    local pidfile="$SWITCHYARD_STATE/nats.pid" portfile="$SWITCHYARD_STATE/nats.port"
    # Our own nats-server from an earlier run, if it still runs and answers.
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if _sy_pid_is "$pid" nats-server && [[ -r $portfile ]] && _sy_nats_check "$(cat "$portfile")"; then
        ours="$(cat "$portfile")"
    fi

    if [[ ${SWITCHYARD_FORCE_LOCAL_SERVICES:-0} == 1 ]]; then
        sy_log "nats: SWITCHYARD_FORCE_LOCAL_SERVICES=1, not using a server we did not start"
    else
        # 0: usable NATS, 1: port free, 2: taken by something unusable.
        rc=0
        _sy_nats_check "$SY_NATS_PORT" || rc=$?
        if [[ $rc -eq 2 ]]; then
            sy_warn "nats: 127.0.0.1:$SY_NATS_PORT is taken by something that is not a NATS server with JetStream"
        fi
    fi

    if [[ $rc -eq 0 ]]; then
        port=$SY_NATS_PORT
    elif [[ -n $ours ]]; then
        port=$ours
        sy_log "nats: our nats-server (pid $pid) is already running"
    else
        # Start our own: on the standard port when it is free, else on another.
        if _sy_port_busy "$SY_NATS_PORT"; then
            port="$(_sy_free_port "$SY_NATS_PRIVATE_PORT")"
        else
            port=$SY_NATS_PORT
        fi
        _sy_nats_start_private "$port"
    fi

    NATS_URL="nats://127.0.0.1:$port"
    export NATS_URL
    sy_log "nats: using 127.0.0.1:$port (NATS_URL=$NATS_URL)"
    sy_write_env_file
}

# ---------------------------------------------------------------------------
# Stopping what we started
# ---------------------------------------------------------------------------

# Stop the private PostgreSQL cluster and nats-server started by this repository
# (never the machine's own services). Their data stays; delete .switchyard/pg and
# .switchyard/nats to start afresh.
stop_private_services() {
    local link="$SWITCHYARD_STATE/pg" base data bindir pid
    if [[ -e $link ]]; then
        base="$(readlink -f "$link")"
        data="$base/data"
        if [[ -f $data/postmaster.pid && -f $data/PG_VERSION ]] &&
            bindir="$(_sy_pg_bindir "$(cat "$data/PG_VERSION")")"; then
            sy_log "postgres: stopping the private cluster in $data"
            _sy_pg_as_owner "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null || true
        fi
    fi
    pid="$(cat "$SWITCHYARD_STATE/nats.pid" 2>/dev/null || true)"
    if _sy_pid_is "$pid" nats-server; then
        sy_log "nats: stopping our nats-server (pid $pid)"
        kill "$pid"
        local i
        for ((i = 0; i < 40; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$SWITCHYARD_STATE/nats.pid"
}
