#!/usr/bin/env bash
# Real-peer test: Debian's diod client tools (diodls, diodcat, dioddate,
# diodload) against `berth serve`, then hostile 9P input from a small python3
# client, then a clean SIGTERM shutdown.
#
# Usage: tests/peers/diod_tools.sh BERTH_BINARY
#
# Starts `BERTH_BINARY serve --9p unix:TMP/b.sock --9p tcp:127.0.0.1:0` and
# reads the TCP port from its stdout line `berth: listening on tcp:127.0.0.1:PORT`.
# Checks, in order:
#   - the unix socket is mode 0600;
#   - diodls (TCP and unix socket) lists exactly version, date, zero, null;
#   - diodcat prints "berth X.Y.Z" for version (the same as `berth --version`)
#     and "SECS.USECS MINWEST.DST" for date;
#   - dioddate prints a date that `date -d` parses;
#   - diodload, IO mode and getattr mode (-g), reports a nonzero ops/s;
#   - `berth ctl write /debug/version x` fails with "Permission denied";
#   - hostile input on the TCP port: a size field of 3, a size field of
#     0x7fffffff, a size above the negotiated msize, a Tversion whose body is
#     garbage, a Twalk with a truncated body (each must close the connection), a
#     half-sent message (must not block other clients), and a fid-table flood
#     of Twalk clones (must get Rlerror EMFILE after 4095 clones, and the
#     connection must keep working);
#   - after each hostile case, diodls still works;
#   - /metrics counts the drops (bad_size, malformed) and the full fid table;
#   - SIGTERM: the server exits 0 within 10 s and removes its unix socket.
# Nothing here depends on speed: diodload's rate is only checked to be nonzero.
#
# Exit status: 0 pass, 1 fail, 77 skipped (diod tools or python3 unavailable).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BERTH_BINARY" >&2
  exit 2
fi
BERTH=$(readlink -f "$1" || true)

say() { echo "diod_tools: $*"; }
skip() { echo "SKIP: diod_tools: $*"; exit 77; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  say "FAIL: $1 is not an executable"
  exit 1
fi

# --- peers ------------------------------------------------------------------
TOOLS=(diodls diodcat dioddate diodload)
missing() { local t; for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || { echo "$t"; return 0; }; done; return 1; }
# Debian installs the tools in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
if missing >/dev/null; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo_cmd=(sudo -n)
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ ${#sudo_cmd[@]} -gt 0 ]; }; then
    say "installing diod"
    inst=(env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends diod)
    "${inst[@]}" >&2 || { env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get update -qq >&2 || true; "${inst[@]}" >&2 || true; }
  fi
  if t=$(missing); then skip "$t is missing and the diod package could not be installed"; fi
fi
command -v python3 >/dev/null 2>&1 || skip "python3 is missing (needed for the hostile-input client)"

# --- server -----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-diodtools.XXXXXX")
SOCK="$TMP/b.sock"
SERVER_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FAILS=0
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
ok() { say "ok: $*"; }
# Show a captured output indented, for failure messages.
show() { sed 's/^/    | /' "$@" >&2 || true; }
server_alive() {
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    say "FAIL: the server died (stderr below)"
    show "$TMP/server.err"
    exit 1
  fi
}
T() { timeout -k 5 "$@"; }   # every peer command runs under a timeout: a hang is a failure, not a stuck test

"$BERTH" serve --9p "unix:$SOCK" --9p tcp:127.0.0.1:0 >"$TMP/server.out" 2>"$TMP/server.err" &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 100); do
  PORT=$(sed -n 's/^berth: listening on tcp:127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/server.out" | head -n1)
  if [ -n "$PORT" ] && grep -qxF "berth: listening on unix:$SOCK" "$TMP/server.out"; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$PORT" ] || ! grep -qxF "berth: listening on unix:$SOCK" "$TMP/server.out"; then
  say "FAIL: the server did not print both 'berth: listening on' lines within 10 s"
  show "$TMP/server.out" "$TMP/server.err"
  exit 1
fi
TCP="127.0.0.1:$PORT"
say "server pid $SERVER_PID on tcp:$TCP and unix:$SOCK"

# --- socket mode -------------------------------------------------------------
mode=$(stat -c %a "$SOCK")
if [ "$mode" = 600 ]; then ok "unix socket mode 0600"; else fail "unix socket $SOCK has mode $mode, want 600"; fi

# --- diodls -------------------------------------------------------------------
EXPECT_LS=$(printf '%s\n' date null version zero)
check_diodls() {  # $1: server address, $2: label
  local out rc=0
  out=$(T 30 diodls -s "$1" -a ctl / 2>"$TMP/diodls.err") || rc=$?
  if [ $rc -ne 0 ]; then
    fail "diodls -s $1 -a ctl / ($2) exited $rc"; show "$TMP/diodls.err"; return
  fi
  if [ "$(printf '%s\n' "$out" | sort)" != "$EXPECT_LS" ]; then
    fail "diodls -s $1 -a ctl / ($2) listed [$(tr '\n' ' ' <<<"$out")], want exactly [date null version zero]"
    show "$TMP/diodls.err"; return
  fi
  ok "diodls $2 lists [$(tr '\n' ' ' <<<"$out")]"
}
check_diodls "$TCP" "over TCP"
check_diodls "$SOCK" "over the unix socket"

# --- diodcat ------------------------------------------------------------------
want_version=$("$BERTH" --version)
rc=0; out=$(T 30 diodcat -s "$TCP" -a ctl version 2>"$TMP/err") || rc=$?
if [ $rc -ne 0 ]; then fail "diodcat version exited $rc"; show "$TMP/err"
elif ! [[ "$out" =~ ^berth\ [0-9]+\.[0-9]+\.[0-9]+$ ]]; then fail "diodcat version printed '$out', want 'berth X.Y.Z'"
elif [ "$out" != "$want_version" ]; then fail "diodcat version printed '$out' but berth --version says '$want_version'"
else ok "diodcat version: $out"; fi

rc=0; out=$(T 30 diodcat -s "$SOCK" -a ctl date 2>"$TMP/err") || rc=$?
now=$(date +%s)
if [ $rc -ne 0 ]; then fail "diodcat date exited $rc"; show "$TMP/err"
elif ! [[ "$out" =~ ^([0-9]+)\.[0-9]+\ -?[0-9]+\.[0-9]+$ ]]; then fail "diodcat date printed '$out', want 'SECS.USECS MINWEST.DST'"
elif secs=${BASH_REMATCH[1]}; [ $((secs - now)) -gt 600 ] || [ $((now - secs)) -gt 600 ]; then
  fail "diodcat date printed '$out', more than 10 minutes from this machine's clock ($now)"
else ok "diodcat date: $out"; fi

# --- dioddate -----------------------------------------------------------------
rc=0; out=$(T 30 dioddate -s "$TCP" 2>"$TMP/err") || rc=$?
if [ $rc -ne 0 ]; then fail "dioddate exited $rc"; show "$TMP/err"
elif ! secs=$(date -d "$out" +%s 2>/dev/null); then fail "dioddate printed '$out', which is not a date"
elif [ $((secs - $(date +%s))) -gt 600 ] || [ $(($(date +%s) - secs)) -gt 600 ]; then fail "dioddate printed '$out', more than 10 minutes off"
else ok "dioddate: $out"; fi

# --- diodload -------------------------------------------------------------------
# diodload prints "diodload: N ops/s, R rMB/s, W wMB/s" (on stderr). Only N > 0
# is checked: the rate says nothing about correctness on a shared machine.
check_diodload() {  # $1: label, rest: extra diodload args
  local label=$1 rc=0 ops
  shift
  T 60 diodload -s "$TCP" -n 4 -r 2 "$@" >"$TMP/load.out" 2>&1 || rc=$?
  ops=$(sed -n 's/^diodload: \([0-9][0-9]*\) ops\/s, [0-9][0-9]* rMB\/s, [0-9][0-9]* wMB\/s$/\1/p' "$TMP/load.out" | head -n1)
  if [ $rc -ne 0 ]; then fail "diodload $label (diodload -s $TCP -n 4 -r 2 $*) exited $rc"; show "$TMP/load.out"
  elif [ -z "$ops" ]; then fail "diodload $label printed no 'N ops/s, R rMB/s, W wMB/s' line"; show "$TMP/load.out"
  elif [ "$ops" -le 0 ]; then fail "diodload $label reported 0 ops/s"; show "$TMP/load.out"
  else ok "diodload $label: $(tr '\n' ' ' <"$TMP/load.out")"; fi
}
check_diodload "IO mode"
check_diodload "getattr mode" -g
server_alive

# --- write to a read-only file ----------------------------------------------------
rc=0; T 30 "$BERTH" ctl --9p "unix:$SOCK" write /debug/version x >"$TMP/w.out" 2>&1 || rc=$?
if [ $rc -eq 0 ]; then fail "berth ctl write /debug/version x exited 0, want a refusal"; show "$TMP/w.out"
elif [ $rc -ge 124 ]; then fail "berth ctl write /debug/version x timed out or was killed ($rc)"; show "$TMP/w.out"
elif ! grep -q "Permission denied" "$TMP/w.out"; then fail "berth ctl write /debug/version x exited $rc without 'Permission denied'"; show "$TMP/w.out"
else ok "berth ctl write /debug/version refused: $(tr '\n' ' ' <"$TMP/w.out")"; fi

# --- hostile input ------------------------------------------------------------
metric() {  # $1: sample name with labels, exactly as /metrics prints it
  awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print "missing" }' "$TMP/metrics"
}
read_metrics() {
  local rc=0
  T 30 "$BERTH" ctl --9p "unix:$SOCK" cat /metrics >"$TMP/metrics" 2>"$TMP/metrics.err" || rc=$?
  if [ $rc -ne 0 ]; then fail "berth ctl cat /metrics exited $rc"; show "$TMP/metrics.err"; fi
}
read_metrics
base_bad=$(metric 'berth_9p_dropped_connections_total{reason="bad_size"}')
base_mal=$(metric 'berth_9p_dropped_connections_total{reason="malformed"}')
base_fid=$(metric 'berth_9p_fid_table_full_total')

cat >"$TMP/hostile.py" <<'PY'
"""Hostile 9P2000.L clients. Usage: hostile.py PORT CASE. Prints one line; exit 0 = as expected."""
import socket, struct, sys, time

Tversion, Rversion, Tattach, Rattach, Twalk, Rwalk, Tclunk, Rclunk, Rlerror = 100, 101, 104, 105, 110, 111, 120, 121, 7
NOFID = 0xFFFFFFFF
NOTAG = 0xFFFF
DEADLINE = 20.0  # seconds for any single expectation; a hang is a failure


def s9(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b


def msg(typ, tag, body):
    return struct.pack("<IBH", 7 + len(body), typ, tag) + body


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    s.settimeout(DEADLINE)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def recv_msg(s):
    size, typ, tag = struct.unpack("<IBH", recv_exact(s, 7))
    return typ, tag, recv_exact(s, size - 7)


def expect_closed(s, what):
    """The server must close the connection; any bytes before EOF are read and ignored."""
    end = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        pass
    print("FAIL: %s: connection still open after %.0f s" % (what, DEADLINE))
    return False


def version(s, msize=8192):
    s.sendall(msg(Tversion, NOTAG, struct.pack("<I", msize) + s9("9P2000.L")))
    typ, tag, body = recv_msg(s)
    if typ != Rversion:
        raise RuntimeError("Tversion answered with type %d" % typ)
    m, = struct.unpack_from("<I", body)
    return m


def attach(s, fid):
    s.sendall(msg(Tattach, 1, struct.pack("<II", fid, NOFID) + s9("root") + s9("ctl") + struct.pack("<I", 0)))
    typ, tag, body = recv_msg(s)
    if typ != Rattach:
        raise RuntimeError("Tattach answered with type %d %r" % (typ, body))


def case_size3(port):
    s = connect(port)
    s.sendall(struct.pack("<I", 3) + b"\x64\x00\x00")
    return expect_closed(s, "size field 3")


def case_size_huge(port):
    s = connect(port)
    s.sendall(struct.pack("<I", 0x7FFFFFFF) + bytes([Tversion]) + b"\xff\xff" + b"A" * 64)
    return expect_closed(s, "size field 0x7fffffff")


def case_size_over_msize(port):
    s = connect(port)
    m = version(s, 8192)
    s.sendall(struct.pack("<IBH", m + 1, Twalk, 1) + b"\0" * 64)
    return expect_closed(s, "size field msize+1 (msize %d) after Tversion" % m)


def case_version_garbage(port):
    s = connect(port)
    # Tversion whose version string claims 0xffff bytes but the message ends after 5.
    body = struct.pack("<I", 8192) + struct.pack("<H", 0xFFFF) + b"9P200"
    s.sendall(msg(Tversion, NOTAG, body))
    return expect_closed(s, "Tversion with a string running past the message")


def case_truncated_walk(port):
    s = connect(port)
    version(s)
    # A Twalk needs fid[4] newfid[4] nwname[2]; send only 3 body bytes.
    s.sendall(msg(Twalk, 1, b"\x00\x00\x00"))
    return expect_closed(s, "Tversion then a Twalk with a 3-byte body")


def case_fid_flood(port):
    s = connect(port)
    version(s)
    attach(s, 0)
    ok = 0
    emfile_at = None
    newfid = 1
    batch = 256
    while emfile_at is None and newfid < 20000:
        out = b"".join(msg(Twalk, t, struct.pack("<IIH", 0, newfid + t, 0)) for t in range(batch))
        s.sendall(out)
        for _ in range(batch):
            typ, tag, body = recv_msg(s)
            if typ == Rwalk:
                ok += 1
            elif typ == Rlerror:
                e, = struct.unpack("<I", body)
                if e != 24:
                    print("FAIL: fid flood: Twalk clone %d got Rlerror %d, want 24 (EMFILE)" % (newfid + tag, e))
                    return False
                if emfile_at is None:
                    emfile_at = ok
            else:
                print("FAIL: fid flood: unexpected reply type %d" % typ)
                return False
        newfid += batch
    if emfile_at is None:
        print("FAIL: fid flood: %d clones and no EMFILE" % ok)
        return False
    if ok != 4095:
        print("FAIL: fid flood: %d clones succeeded (plus the attach fid) before EMFILE, want 4095 (limit 4096 fids)" % ok)
        return False
    # The connection must survive: clunk one fid, then a clone must work again.
    s.sendall(msg(Tclunk, 1, struct.pack("<I", 1)))
    typ, _, body = recv_msg(s)
    if typ != Rclunk:
        print("FAIL: fid flood: Tclunk after EMFILE answered with type %d" % typ)
        return False
    s.sendall(msg(Twalk, 2, struct.pack("<IIH", 0, 1, 0)))
    typ, _, body = recv_msg(s)
    if typ != Rwalk:
        print("FAIL: fid flood: Twalk after freeing a fid answered with type %d %r" % (typ, body))
        return False
    print("fid flood: %d clones, then Rlerror EMFILE; after a Tclunk a clone works again" % ok)
    return True


def case_half_message(port):
    """Hold a half-sent message open; the caller checks that others are served meanwhile."""
    s = connect(port)
    version(s)
    s.sendall(struct.pack("<IBH", 100, Twalk, 1) + b"\x00" * 10)
    print("HOLDING", flush=True)
    sys.stdin.read()  # until the caller closes our stdin
    return True


def case_read_flood(port):
    """Ask for gigabytes of /debug/zero without reading a byte of the replies.
    The server must stop reading from this client instead of queueing them."""
    s = connect(port)
    version(s, msize=1 << 20)
    s.sendall(msg(Tattach, 1, struct.pack("<II", 1, NOFID) + s9("flood") + s9("ctl") + struct.pack("<I", 0)))
    recv_msg(s)
    s.sendall(msg(Twalk, 2, struct.pack("<IIH", 1, 2, 1) + s9("zero")))
    recv_msg(s)
    s.sendall(msg(12, 3, struct.pack("<II", 2, 0)))  # Tlopen O_RDONLY
    recv_msg(s)
    one = b"".join(msg(116, 10 + i, struct.pack("<IQI", 2, 0, 1 << 20)) for i in range(4000))
    s.setblocking(False)
    sent, end = 0, time.monotonic() + 3
    while sent < len(one) and time.monotonic() < end:
        try:
            sent += s.send(one[sent:])
        except BlockingIOError:
            time.sleep(0.05)
    print("FLOODING %d reads of 1 MiB asked" % (sent // 19), flush=True)
    sys.stdin.read()
    return True


CASES = {
    "size3": case_size3, "size_huge": case_size_huge, "size_over_msize": case_size_over_msize,
    "version_garbage": case_version_garbage, "truncated_walk": case_truncated_walk,
    "fid_flood": case_fid_flood, "half_message": case_half_message, "read_flood": case_read_flood,
}

if __name__ == "__main__":
    port, case = int(sys.argv[1]), sys.argv[2]
    try:
        good = CASES[case](port)
    except Exception as e:  # noqa: BLE001 - any surprise is a failure with its text
        print("FAIL: %s: %s: %s" % (case, type(e).__name__, e))
        good = False
    sys.exit(0 if good else 1)
PY

hostile() {  # $1: case, $2: description
  local rc=0
  T 60 python3 "$TMP/hostile.py" "$PORT" "$1" >"$TMP/hostile.out" 2>&1 || rc=$?
  server_alive
  if [ $rc -ne 0 ]; then fail "hostile input: $2 (exit $rc)"; show "$TMP/hostile.out"
  else ok "hostile input: $2$( [ -s "$TMP/hostile.out" ] && echo ": $(tr '\n' ' ' <"$TMP/hostile.out")" )"; fi
  check_diodls "$TCP" "after: $2"
}
hostile size3 "size field 3 closes the connection"
hostile size_huge "size field 0x7fffffff closes the connection"
hostile size_over_msize "size field above the negotiated msize closes the connection"
hostile version_garbage "Tversion with a garbage body closes the connection"
hostile truncated_walk "Tversion then a truncated Twalk closes the connection"
hostile fid_flood "fid-table flood gets Rlerror EMFILE and the connection keeps working"

# A client stalled mid-message must not stall others.
coproc HALF { exec python3 "$TMP/hostile.py" "$PORT" half_message 2>&1; }
line=""
read -r -t 20 line <&"${HALF[0]}" || true
if [ "$line" != HOLDING ]; then
  fail "half-message client did not get going: '$line'"
else
  check_diodls "$TCP" "while another client holds a half-sent message"
fi
half_in=${HALF[1]}
eval "exec $half_in>&-"
wait "$HALF_PID" 2>/dev/null || true
server_alive

# A client that asks for gigabytes and reads nothing is throttled: the
# server's memory stays bounded and others are still served.
coproc FLOOD { exec python3 "$TMP/hostile.py" "$PORT" read_flood 2>&1; }
line=""
read -r -t 30 line <&"${FLOOD[0]}" || true
case "$line" in
  FLOODING*)
    rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
    if [ "${rss_kb:-0}" -lt 262144 ]; then ok "read flood without reading replies: server RSS ${rss_kb} kB ($line)"
    else fail "read flood: server RSS ${rss_kb} kB, want < 256 MiB"; fi
    check_diodls "$TCP" "while a client floods reads without reading" ;;
  *) fail "read-flood client did not get going: '$line'" ;;
esac
flood_in=${FLOOD[1]}
eval "exec $flood_in>&-"
wait "$FLOOD_PID" 2>/dev/null || true
server_alive

read_metrics
check_counter() {  # $1: sample, $2: baseline, $3: minimum increase
  local v
  v=$(metric "$1")
  if ! [[ "$v" =~ ^[0-9]+$ ]]; then fail "/metrics has no sample $1"; show "$TMP/metrics"; return; fi
  if ! [[ "$2" =~ ^[0-9]+$ ]] || [ "$v" -lt $(($2 + $3)) ]; then
    fail "/metrics: $1 is $v (was $2 before the hostile input), want at least +$3"; return
  fi
  ok "/metrics: $1 $v (was $2)"
}
check_counter 'berth_9p_dropped_connections_total{reason="bad_size"}' "$base_bad" 3
check_counter 'berth_9p_dropped_connections_total{reason="malformed"}' "$base_mal" 2
check_counter 'berth_9p_fid_table_full_total' "$base_fid" 1

# --- SIGTERM ------------------------------------------------------------------
kill -TERM "$SERVER_PID"
exited=0
for _ in $(seq 1 100); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then exited=1; break; fi
  sleep 0.1
done
if [ $exited -eq 0 ]; then
  fail "the server did not exit within 10 s of SIGTERM"
else
  rc=0; wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  if [ $rc -ne 0 ]; then fail "the server exited $rc after SIGTERM, want 0"; show "$TMP/server.err"
  else ok "SIGTERM: the server exited 0"; fi
  if [ -e "$SOCK" ]; then fail "the unix socket $SOCK is still there after SIGTERM"
  else ok "SIGTERM: the unix socket was removed"; fi
fi

if [ $FAILS -ne 0 ]; then
  say "FAILED: $FAILS check(s) failed (see FAIL lines above)"
  exit 1
fi
say "PASS"
exit 0
