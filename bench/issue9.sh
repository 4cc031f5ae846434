#!/bin/sh
# The issue-9 benchmarks in one run (docs/performance.md, "The listener as the persistent
# connection (issue 9)"): hand-off (with a py-spy profile of the new-endpoint path), ten forks on
# one device, playbook on 20 and 50 hosts. Results in .cache/bench/issue9/. About 15 minutes.
set -e
cd "$(dirname "$0")/.."
OUT=.cache/bench/issue9
mkdir -p "$OUT"
PY=.venv/bin/python
stamp() { echo "$(date -u '+%Y-%m-%d %H:%M:%S') $1 load=$(cut -d' ' -f1-3 /proc/loadavg) head=$(git rev-parse --short HEAD)" | tee -a "$OUT/timeline.txt"; }
stamp "start handoff"
timeout 900 $PY bench/handoff.py --iterations 200 --repeat 3 --profile "$OUT/handoff-endpoint-new.pyspy.txt" \
    --profile-iterations 200 --json "$OUT/handoff.json" > /dev/null
stamp "start forks"
timeout 900 $PY bench/forks.py --hosts 10 --tasks 6 --forks 10 --repeat 3 --json "$OUT/forks.json" > /dev/null
stamp "start playbook"
timeout 1800 $PY bench/playbook.py --hosts 20 50 --forks 10 --repeat 3 --json "$OUT/playbook.json" > /dev/null
stamp "end"
