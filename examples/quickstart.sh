#!/usr/bin/env bash
# cq's main job, for real, with nothing set up beforehand: a private munged with its own key
# (no system service), a cq_server on a loopback port, and several "VMs" submitting package
# builds at once with their own USE flags. The server runs the builds strictly one at a time;
# as each ends, the VM that asked for it is notified and its post script "installs" it.
#
#   bash examples/quickstart.sh
#
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps
cargo build --release --locked -q -p cq-bin
bin=$PWD/target/release

work=$(mktemp -d)
chmod 755 "$work" # munged refuses directories others could write to, and needs o+x.
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  # --stop waits until munged has exited, so that it no longer writes into $work.
  [ -f "$work/munged.pid" ] && munged --socket="$work/munge.socket" --stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a private munged with its own key in $work"
head -c 1024 /dev/urandom >"$work/munge.key"
chmod 600 "$work/munge.key"
# Without --foreground, munged's parent returns only once the daemon serves.
munged --key-file="$work/munge.key" --socket="$work/munge.socket" \
  --pid-file="$work/munged.pid" --log-file="$work/munged.log" --seed-file="$work/munged.seed"
socket=(--munge-socket "$work/munge.socket")

echo "== cq_server on 127.0.0.1, a free port"
mkfifo "$work/server.fifo"
"$bin/cq_server" -h 127.0.0.1 -p 0 --state-dir "$work/state" "${socket[@]}" 2>"$work/server.fifo" &
server_pid=$!
exec 3<"$work/server.fifo"
port=
while IFS= read -r line <&3; do
  echo "   server: ${line#*Z }"
  case $line in *"listening on "*)
    port=${line##*listening on 127.0.0.1:}
    port=${port%% *}
    break ;;
  esac
done
[ -n "$port" ] || { echo "quickstart: cq_server did not start" >&2; exit 1; }
# Keep showing the server's log while the clients work.
sed -u 's/^[^ ]*Z /   server: /' <&3 &

mkdir -p "$work/binpkgs" "$work/vms"
# The build: a stand-in for `emerge --buildpkgonly`, which would need a Gentoo system.
cat >"$work/fake-emerge" <<SCRIPT
#!/bin/sh
echo "\$(date +%T.%N | cut -c1-12) start job \$CQ_JOB_ID: \$PKG USE=\"\$USE\"" >> $work/timeline
sleep 0.5
echo "binpkg of \$PKG built with USE=\"\$USE\"" > "$work/binpkgs/\${PKG##*/}-\$CQ_JOB_ID.gpkg.tar"
echo "\$(date +%T.%N | cut -c1-12) end   job \$CQ_JOB_ID" >> $work/timeline
SCRIPT
chmod +x "$work/fake-emerge"
# The post script each VM runs when its build ends: $1 internal status, $2 exit status.
cat >"$work/install" <<'SCRIPT'
#!/bin/sh
if [ "$1" -eq 0 ] && [ "$2" -eq 0 ]; then
  echo "   $VM: job $CQ_JOB_ID built in ${CQ_DURATION}s on $CQ_SERVER: installing it"
else
  echo "   $VM: job $CQ_JOB_ID ended '$CQ_OUTCOME' (internal $1, exit $2): nothing to install"
fi
SCRIPT
chmod +x "$work/install"

echo "== four VMs submit at once"
submit() { # VM PKG USE [COMMAND...]
  local vm=$1 pkg=$2 use=$3
  shift 3
  VM=$vm PKG=$pkg USE=$use "$bin/cq_client" -h 127.0.0.1 -p "$port" "${socket[@]}" \
    -E PKG -E USE -E "CQ_BUILD_HOST_NOTE=from $vm" -P "$work/install" -- "$@" || echo "   $vm: cq_client exited $?"
}
submit vm-desktop www-client/firefox "X wayland pulseaudio" "$work/fake-emerge" --buildpkgonly www-client/firefox &
submit vm-server www-client/firefox "-X -wayland" "$work/fake-emerge" --buildpkgonly www-client/firefox &
submit vm-hardened sys-libs/glibc "hardened" "$work/fake-emerge" --buildpkgonly sys-libs/glibc &
submit vm-typo app-misc/foo "" emerge-typo --buildpkgonly app-misc/foo &
wait $(jobs -p | tail -n 4)

echo "== what ran, in order (never two at once)"
sed 's/^/   /' "$work/timeline"
echo "== binary packages built"
ls "$work/binpkgs" | sed 's/^/   /'

echo "== stopping the server (SIGTERM drains and exits 0)"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=
echo "== done"
