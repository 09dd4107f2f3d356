#!/usr/bin/env bash
# Stop ONE throw-away Ray head started with `ray start --head --temp-dir DIR` — its GCS server,
# raylet, dashboard, agents and workers — leaving every other Ray on the host running, unlike a
# plain `ray stop`, which stops all of them.
#
#   cluster/stop-head.sh /tmp/ray-distill
#
# The head's processes are those whose command line names DIR (each gets its session folder
# under it), and their descendants. SIGTERM first; whatever is still alive after 10 s (the GCS
# server and the autoscaler monitor ignore SIGTERM) gets SIGKILL. This script and its callers
# are never signalled. Exit 0 once none is left, 1 if one survives.
set -u
dir="${1:?usage: cluster/stop-head.sh TEMP_DIR (the --temp-dir the head was started with)}"
dir="${dir%/}"
# This shell and its ancestors (a caller that happens to mention DIR) are never targets.
protect=" $$ "
p=$$
while [ "$p" -gt 1 ]; do p=$(ps -o ppid= -p "$p" | tr -d ' '); protect+="$p "; done

targets() {
  local roots kids all=""
  roots=$(pgrep -f -- "${dir}/" || true)
  while [ -n "$roots" ]; do
    all+=" $roots"
    kids=""
    for r in $roots; do kids+=" $(pgrep -P "$r" || true)"; done
    roots=$(echo $kids)
  done
  for t in $all; do
    case "$protect" in *" $t "*) ;; *) [ -d "/proc/$t" ] && ! grep -qs '^State:.*Z' "/proc/$t/status" && echo "$t";; esac
  done | sort -u
}

pids=$(targets)
if [ -z "$pids" ]; then
  echo "no Ray process with temp dir ${dir} is running" >&2
  exit 0
fi
kill -TERM $pids 2>/dev/null
for _ in $(seq 20); do [ -z "$(targets)" ] && break; sleep 0.5; done
left=$(targets)
if [ -n "$left" ]; then
  kill -KILL $left 2>/dev/null
  for _ in $(seq 20); do [ -z "$(targets)" ] && break; sleep 0.5; done
fi
left=$(targets)
if [ -n "$left" ]; then
  echo "still running:" >&2
  ps -o pid,comm -p $left >&2
  exit 1
fi
echo "stopped the Ray head in ${dir}"
