#!/usr/bin/env bash
# The demo: queue two jobs on a tiny local model and let the daemon run them.
# Everything lives in .mtld-demo/ (MTLD_HOME); nothing is downloaded.
# The commands it suggests at the end name every file by its absolute path,
# so each works pasted alone, in any folder (tests/test_demo.py runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(cd "${BIN:-.venv/bin}" && pwd)
export MTLD_HOME="$PWD/.mtld-demo"
export MTLD_DAEMON__POLL_INTERVAL_S=1 MTLD_DAEMON__NOTIFY=false
rm -rf "$MTLD_HOME"
started=$(date +%s)

if [ ! -f examples/tiny-bert/config.json ]; then
    echo "== building a tiny BERT and its WordPiece tokenizer from the demo data"
    "$BIN/python" -m mtld.train.tinymodel examples/tiny-bert examples/data/*.train.jsonl >/dev/null
fi

echo "== queueing the demo jobs"
demo=$("$BIN/mtld" submit examples/demo.toml)
echo "job $demo: demo (4 tasks, 3 epochs)"
quick=$("$BIN/mtld" submit examples/sentiment.toml)
echo "job $quick: sentiment-quick (priority 5: runs first)"

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
echo
q() { printf '%q' "$1"; }  # a path as the shell reads it back, spaces and all
mtld="MTLD_HOME=$(q "$MTLD_HOME") $(q "$BIN/mtld")"
run_dir=$("$BIN/mtld" show "$demo" --json | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["run_dir"])')
echo "== try (each line works on its own, from any folder)"
echo "  $mtld show $demo"
echo "  $mtld logs $demo -n 20"
echo "  $mtld status --json"
echo "  $(q "$BIN/mtld") predict $(q "$run_dir") $(q "$PWD/examples/data/sentiment.eval.jsonl")" \
     "--out $(q "$MTLD_HOME/sentiment.predictions.jsonl")"
echo
echo "== what 'mtld agent install' would do for your own state on this machine (nothing is changed)"
env -u MTLD_HOME "$BIN/mtld" agent install --dry-run
echo
echo "demo finished in $(( $(date +%s) - started )) s"
