#!/usr/bin/env bash
# Runs the README's first command exactly as written (the first line of the "Two commands"
# block, without its comment), waits until the node it starts answers a ClusterInfo call with
# a leader, then stops it with SIGINT and checks that it exits cleanly. Used by `.ci/run`.
#
#   scripts/readme-first-command.sh [JOCHAT_CLI]
#
# JOCHAT_CLI is the `jochat` binary that asks the node (default: target/debug/jochat, built
# first when missing). Waits at most $FIRST_COMMAND_TIMEOUT_SECS (default 1500) for the build
# and the start.
set -euo pipefail
cd "$(dirname "$0")/.."

cli="${1:-target/debug/jochat}"
timeout_secs="${FIRST_COMMAND_TIMEOUT_SECS:-1500}"

# The first line inside the code block that follows "## Two commands".
command="$(awk '
    /^## Two commands/ { section = 1; next }
    section && /^```/ { if (inside) exit; inside = 1; next }
    section && inside && NF { print; exit }
' README.md)"
command="${command%%#*}"
command="$(echo "$command" | sed -e 's/[[:space:]]*$//')"
if [ -z "$command" ]; then
    echo "no first command found in README.md's \"Two commands\" section" >&2
    exit 1
fi
echo "== the README's first command: $command"

if [ ! -x "$cli" ]; then
    cargo build -p jochat-cli --bin jochat
fi

log="$(mktemp)"
# Its own process group, so that stopping it reaches cargo's child too.
set -m
bash -c "exec $command" >"$log" 2>&1 &
pid=$!
set +m

stop() {
    if kill -0 "$pid" 2>/dev/null; then
        kill -INT -- "-$pid" 2>/dev/null || true
    fi
}
trap 'stop; sleep 1; kill -KILL -- "-$pid" 2>/dev/null || true; rm -f "$log"' EXIT

started=$(date +%s)
answered=""
while [ $(( $(date +%s) - started )) -lt "$timeout_secs" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "the first command ended before its node answered; its output:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    if answer="$("$cli" --servers 127.0.0.1:5001 --deadline-ms 2000 --json cluster info 2>/dev/null)" \
        && echo "$answer" | grep -q '"leader_id": *[1-9]'; then
        answered="$answer"
        break
    fi
    sleep 1
done
if [ -z "$answered" ]; then
    echo "the node did not answer within ${timeout_secs} s; its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "== the node answered after $(( $(date +%s) - started )) s: $answered"

kill -INT -- "-$pid"
status=0
wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then
    echo "the node exited with status $status after SIGINT; its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "== the node stopped cleanly"
