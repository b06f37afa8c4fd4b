# Shared setup for the NBD peer tests (sourced, not run).
#
# Expects NAME (the test's name) and the berth binary in BERTH. BERTH_SERVE,
# when set, is the program run as `$BERTH_SERVE serve ...` instead of
# `$BERTH serve` (another build of berth, say one with sanitizers); `ctl` and
# `qcow` always come from BERTH.
#
# Provides: say, skip, fail, need_qemu_utils, start_berth ARGS..., stop_berth,
# nbd_uri ID, ctl ARGS..., and cleanup on exit (TMP is removed).

say() { echo "$NAME: $*"; }
skip() { echo "SKIP: $NAME: $*"; exit 77; }
fail() { echo "FAIL: $NAME: $*"; [ -s "${TMP:-/nonexistent}/berth.log" ] && tail -n 30 "$TMP/berth.log" | sed 's/^/  berth: /'; exit 1; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  echo "FAIL: $NAME: '$BERTH' is not an executable"
  exit 1
fi
SERVE="${BERTH_SERVE:-$BERTH}"

# qemu-img, qemu-io, qemu-nbd come from qemu-utils; installed when missing
# and possible (root or passwordless sudo, apt-get).
install_pkgs() {
  local sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
    sudo_cmd=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $*"
  local inst=(env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@")
  "${inst[@]}" >&2 || { env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get update -qq >&2 || true; "${inst[@]}" >&2; }
}
need_qemu_utils() {
  if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
    install_pkgs qemu-utils || true
  fi
  command -v qemu-img >/dev/null 2>&1 || skip "qemu-img is missing and qemu-utils could not be installed"
  command -v qemu-io >/dev/null 2>&1 || skip "qemu-io is missing and qemu-utils could not be installed"
  command -v python3 >/dev/null 2>&1 || skip "python3 is missing"
}

if [ -z "${BERTH_SERVE:-}" ] && ! "$BERTH" serve --help 2>&1 | grep -q -- '--disk'; then
  skip "'$BERTH serve' has no --disk option (set BERTH_SERVE to a server that has)"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-$NAME.XXXXXX")
SERVER_PID=""
NINEP="$TMP/b.sock"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT

# start_berth ARGS...: serve the 9P tree on $NINEP plus ARGS (--disk ...);
# waits for the "listening" line; output goes to $TMP/berth.log (stderr)
# and $TMP/berth.out (stdout).
start_berth() {
  : >"$TMP/berth.out"
  "$SERVE" serve --9p "unix:$NINEP" --log-level "${BERTH_LOG_LEVEL:-info}" "$@" >"$TMP/berth.out" 2>"$TMP/berth.log" &
  SERVER_PID=$!
  local i
  for i in $(seq 1 200); do
    grep -q "listening on" "$TMP/berth.out" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/berth.out"; fail "berth exited at start"; }
    sleep 0.05
  done
  fail "berth did not start listening within 10 s"
}

# stop_berth [SIGNAL]: SIGTERM by default (then it must exit 0 within 20 s);
# KILL for a crash.
stop_berth() {
  local sig="${1:-TERM}" i rc=0
  [ -n "$SERVER_PID" ] || return 0
  kill "-$sig" "$SERVER_PID" 2>/dev/null || true
  if [ "$sig" = KILL ]; then
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    return 0
  fi
  for i in $(seq 1 200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SERVER_PID" 2>/dev/null && fail "berth did not exit within 20 s of SIG$sig"
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  [ "$rc" -eq 0 ] || fail "berth exited $rc after SIG$sig"
}

nbd_uri() { echo "nbd+unix:///$1?socket=$TMP/$1.nbd"; }
ctl() { "$BERTH" ctl --9p "unix:$NINEP" "$@"; }
