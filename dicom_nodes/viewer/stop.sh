#!/usr/bin/env bash
# Stops the nginx that start.sh runs on DATA_DIR (SIGQUIT, a graceful shutdown; then waits up to
# 10 s).
#   stop.sh DATA_DIR
set -euo pipefail
data_dir=${1:?usage: stop.sh DATA_DIR}
pid_file="$data_dir/nginx.pid"
[[ -f "$pid_file" ]] || { echo "stop.sh: no $pid_file, nothing to stop" >&2; exit 0; }
pid=$(<"$pid_file")
# Only signal the PID if it is still an nginx (the number may have been reused).
if [[ "$(ps -p "$pid" -o comm= 2>/dev/null)" == nginx ]]; then
  kill -QUIT "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "stop.sh: nginx (PID $pid) still running after 10 s" >&2
    exit 1
  fi
fi
rm -f "$pid_file"
