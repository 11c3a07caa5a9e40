# shellcheck shell=bash disable=SC2034 # ADDR, ADMIN and HPID are set for the sourcing script
# Shared by the benchmark scripts that start their own servers (source it after setting OUT,
# SRV and SERVER_CPU, and declaring PIDS=()).

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Start a one-shard shardcast host pinned to SERVER_CPU, logging to $OUT/<name>.log.
# $1 = name, rest: extra flags. Sets ADDR, ADMIN and HPID once it listens.
start_host() {
  local log="$OUT/$1.log"; shift
  taskset -c "$SERVER_CPU" "$SRV" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --shards 1 \
    --log warn "$@" >"$log" 2>&1 &
  HPID=$!
  PIDS+=("$HPID")
  for _ in $(seq 100); do
    if grep -q 'listening on' "$log" 2>/dev/null; then
      ADDR=$(grep -o 'listening on [0-9.]*:[0-9]*' "$log" | head -1 | awk '{print $3}')
      ADMIN=$(grep -o '(admin [0-9.]*:[0-9]*' "$log" | head -1 | awk '{print $2}')
      return 0
    fi
    sleep 0.1
  done
  echo "$1 did not start; log:" >&2; cat "$log" >&2; return 1
}
