#!/usr/bin/env bash
# cq's main job, for real, with nothing set up beforehand and no system service: certificates
# for mutual TLS made on the spot, a cq_server on a loopback port, and several "VMs", each with
# its own client certificate, submitting package builds at once with their own USE flags. The server runs the builds strictly one at a time;
# as each ends, the VM that asked for it is notified and its post script "installs" it.
#
#   bash examples/quickstart.sh
#
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== system packages (installed only if missing)"
bash .ci/install-deps
echo "== building cq_server and cq_client (release; a few minutes the first time)"
cargo build --release --locked -q -p cq-bin
bin=$PWD/target/release

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

vms=(vm-desktop vm-server vm-hardened vm-typo)
echo "== certificates: a CA, the server, one client certificate per VM (in $work/tls)"
"$bin/cq_server" tls init "$work/tls" --host 127.0.0.1 >/dev/null
for vm in "${vms[@]}"; do
  "$bin/cq_server" tls client "$vm" --dir "$work/tls" >/dev/null
  # Certificate names are not local users here: map each VM to the user running this demo.
  echo "$vm $(id -un)" >>"$work/tls/users"
done
ls "$work/tls" | sed 's/^/   /' | tr '\n' ' '
echo
server_auth=(--auth tls --tls-ca "$work/tls/ca.pem" --tls-cert "$work/tls/server.pem"
  --tls-key "$work/tls/server.key" --tls-user-map "$work/tls/users")
# The VMs map to the user running this demo; if that is root, root's jobs must be allowed.
[ "$(id -u)" = 0 ] && server_auth+=(--allow-root)

echo "== cq_server on 127.0.0.1, a free port"
mkfifo "$work/server.fifo"
"$bin/cq_server" -h 127.0.0.1 -p 0 --state-dir "$work/state" "${server_auth[@]}" 2>"$work/server.fifo" &
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
  VM=$vm PKG=$pkg USE=$use "$bin/cq_client" -h 127.0.0.1 -p "$port" --auth tls \
    --tls-ca "$work/tls/ca.pem" --tls-cert "$work/tls/$vm.pem" --tls-key "$work/tls/$vm.key" \
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
