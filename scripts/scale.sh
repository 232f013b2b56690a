#!/usr/bin/env bash
# Scale runs on one three-node release cluster (ports 5301-5304, a temporary folder): fill it
# through the normal write path, measure inbox pages and account searches at that size, then
# time an empty fourth node's join (until the leader reports it a voter that has applied the
# leader's commit index). Prints the term after the fill (1 + the elections it caused), the
# snapshots each node built and how many replication calls timed out. Needs `cargo build --release` first.
#
# Usage: scripts/scale.sh MESSAGES CONTENT_BYTES      e.g. scripts/scale.sh 1000000 1000
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 MESSAGES CONTENT_BYTES" >&2
    exit 2
fi
B="${JOCHAT_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}"
D=$(mktemp -d /tmp/jochat-scale-XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"' EXIT
export RUST_LOG="${RUST_LOG:-warn,jochat_node::raft::storage=info}"
S=127.0.0.1:5301,127.0.0.1:5302,127.0.0.1:5303

"$B/jochat-node" --server-id 1 --port 5301 --db-file "$D/n1.db" 2> "$D/n1.log" &
sleep 0.5
"$B/jochat-node" --server-id 2 --port 5302 --db-file "$D/n2.db" \
    --peers 1:127.0.0.1:5301 2> "$D/n2.log" &
sleep 0.5
"$B/jochat-node" --server-id 3 --port 5303 --db-file "$D/n3.db" \
    --peers 1:127.0.0.1:5301,2:127.0.0.1:5302 2> "$D/n3.log" &
until "$B/jochat" --servers $S --json cluster info 2>/dev/null | grep -q '"leader_id":1'; do
    sleep 0.2
done
sleep 2

"$B/jochat" --servers $S --json bench --op inbox --concurrency 1 --duration 10s \
    --preload-messages "$1" --content-bytes "$2" | tail -1
"$B/jochat" --servers $S --json cluster info |
    python3 -c "import json, sys; print('term after the fill', json.load(sys.stdin)['term'])"
for n in 1 2 3; do
    echo "node $n snapshots:"
    grep -a "snapshot built" "$D/n$n.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^.*snapshot built/  built/' || true
done
for n in 1 2 3; do
    echo "node $n replication timeouts: $(grep -ac 'timeout after\|Timeout expired' "$D/n$n.log" || true)"
done
"$B/jochat" --servers $S --json bench --op inbox --concurrency 8 --duration 10s | tail -1
"$B/jochat" --servers $S --json bench --op accounts --concurrency 8 --duration 10s | tail -1
ls -l "$D"/n1.db*

commit=$("$B/jochat" --servers 127.0.0.1:5301 --json cluster info |
    python3 -c "import json, sys; print(json.load(sys.stdin)['commit_index'])")
echo "leader commit index $commit"
started=$(date +%s.%N)
"$B/jochat-node" --server-id 4 --port 5304 --db-file "$D/n4.db" \
    --peers 1:127.0.0.1:5301,2:127.0.0.1:5302,3:127.0.0.1:5303 2> "$D/n4.log" &
until "$B/jochat" --servers 127.0.0.1:5301 --json cluster info 2>/dev/null > "$D/info.json" &&
    python3 - "$D/info.json" "$commit" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
four = {m["id"]: m for m in info["members"]}.get(4)
done = four and four["role"] == "voter" and (four["applied_index"] or 0) >= int(sys.argv[2])
sys.exit(0 if done else 1)
PY
do
    sleep 0.2
done
finished=$(date +%s.%N)
echo "join_seconds $(python3 -c "print(round($finished - $started, 2))")"
ls -l "$D"/n4.db*
