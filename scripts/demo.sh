#!/usr/bin/env bash
# The README's tour, run for real: every step prints the command it runs, so you can repeat it.
# With --postgres it runs on a throwaway PostgreSQL server (scripts/pgcluster.py) instead of
# the embedded SQLite file, and leaves that server running for you to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export TREADLE_DB=.demo/treadle.db
PIPELINE=pipelines/document_review.yaml
if [[ "${1:-}" == "--postgres" ]]; then
  PGDIR="$PWD/.demo-pg"
  [[ -d "$PGDIR" ]] && python scripts/pgcluster.py stop "$PGDIR" >/dev/null 2>&1 || true
  TREADLE_DB=$(python scripts/pgcluster.py start "$PGDIR")
  export TREADLE_DB
fi

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
# advance and the --advance flags exit 1 when a stage failed or an item was rejected.
step_may_fail() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || echo "(exit code $?)"; }

rm -rf .demo && mkdir -p .demo
cat > .demo/items.jsonl <<'JSONL'
{"id": "onboarding", "data": {"path": "docs/onboarding.md", "out": ".demo/out"}}
{"id": "release-notes", "data": {"path": "docs/release-notes.md", "flaky": true, "out": ".demo/out"}}
{"id": "incident-report", "data": {"path": "docs/incident-report.md", "out": ".demo/out"}}
JSONL

echo "treadle demo: database $(python -c 'import sys; from treadle_cli.store import display_target; print(display_target(sys.argv[1]))' "$TREADLE_DB"), pipeline $PIPELINE"
step treadle validate "$PIPELINE"
step treadle graph "$PIPELINE"
step cat .demo/items.jsonl
step_may_fail treadle advance "$PIPELINE" --items .demo/items.jsonl
step treadle status --all
step treadle reviews
step treadle status release-notes
step treadle approve onboarding review --comment "Reads well" --advance
step treadle reject incident-report review --reason "Fix the broken runbook link before publishing"
step treadle retry incident-report review --advance
step treadle approve incident-report review --comment "Link is tracked in OPS-12" --advance
step treadle status incident-report
step treadle history incident-report
step treadle status --all

# Work that continues by itself: submit an item, let a worker run it, approve from "another
# shell" (here the same one), and the worker publishes it without anyone typing advance.
echo '{"id": "team-handbook", "data": {"path": "docs/onboarding.md", "out": ".demo/out"}}' > .demo/more.jsonl
step treadle submit "$PIPELINE" --items .demo/more.jsonl
printf '\n\033[1m$ %s\033[0m\n' "treadle worker $PIPELINE --concurrency 2 > .demo/worker.log 2>&1 &"
treadle worker "$PIPELINE" --concurrency 2 > .demo/worker.log 2>&1 &
WORKER=$!
trap 'kill -TERM $WORKER 2>/dev/null || true' EXIT
step_may_fail treadle watch team-handbook --until-settled      # exit 5: waiting on a human
step treadle workers
step treadle approve team-handbook review --comment "Approved from another shell"
step treadle watch team-handbook --until-settled               # the worker publishes it
printf '\n\033[1m$ %s\033[0m\n' "kill -TERM \$WORKER    # stops claiming, finishes, releases"
kill -TERM "$WORKER"
wait "$WORKER"
trap - EXIT
step cat .demo/worker.log
step ls .demo/out
echo
echo "Done. release-notes still waits for you: treadle --db '$TREADLE_DB' approve release-notes review --advance"
if [[ -n "${PGDIR:-}" ]]; then
  echo "The PostgreSQL server is still running; stop it with: python scripts/pgcluster.py stop $PGDIR"
fi
