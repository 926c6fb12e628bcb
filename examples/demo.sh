#!/usr/bin/env bash
# The demo: queue two jobs on a tiny local model and let the daemon run them.
# Everything lives in .mtld-demo/ (MTLD_HOME); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export MTLD_HOME="$PWD/.mtld-demo"
export MTLD_DAEMON__POLL_INTERVAL_S=1 MTLD_DAEMON__NOTIFY=false
rm -rf "$MTLD_HOME"
started=$(date +%s)

if [ ! -f examples/tiny-bert/config.json ]; then
    echo "== building a tiny BERT and its WordPiece tokenizer from the demo data"
    "$BIN/python" -m mtld.train.tinymodel examples/tiny-bert examples/data/*.train.jsonl >/dev/null
fi

echo "== queueing the demo jobs"
echo "job $("$BIN/mtld" submit examples/demo.toml): demo (4 tasks, 3 epochs)"
echo "job $("$BIN/mtld" submit examples/sentiment.toml): sentiment-quick (priority 5: runs first)"

echo "== running the daemon until the queue is empty (progress below; the full log is JSON lines)"
"$BIN/mtld" daemon --exit-when-idle

echo
echo "== status"
"$BIN/mtld" status
echo
echo "== where things are"
for run in "$MTLD_HOME"/runs/*/; do
    echo "  $run"
    echo "      model/ (final)  best/ (best eval score)  metrics.json  run.jsonl (the run's events)"
done
echo "  $MTLD_HOME/logs/mtld.jsonl (the daemon's events)"
echo "  try: MTLD_HOME=.mtld-demo .venv/bin/mtld show 1      (or: logs 1, status --json)"
echo "       .venv/bin/mtld predict .mtld-demo/runs/1-demo examples/data/sentiment.eval.jsonl"
echo
echo "== what 'mtld agent install' would do for your own state on this machine (nothing is changed)"
env -u MTLD_HOME "$BIN/mtld" agent install --dry-run
echo
echo "demo finished in $(( $(date +%s) - started )) s"
