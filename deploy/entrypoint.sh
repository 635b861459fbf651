#!/bin/sh
# The container's entrypoint: `tunelab serve` with its settings from environment variables
# (docs/deploy.md lists them). Arguments given to `docker run IMAGE ...` are passed on to tunelab serve.
#
#   TUNELAB_RUNS_DIR   directory of runs (default /runs, the image's volume): every finished run in it is
#                      served, one served as the base if it is a model directory (a `tunelab merge`/export
#                      output), and runs that finish there later are picked up (--watch). If the directory is
#                      itself a run, that run is served (as TUNELAB_MODEL_NAME, default its directory name).
#   TUNELAB_RUNS       instead: comma-separated run directories (NAME=DIR to choose the model id)
#   TUNELAB_WATCH      1 (default): serve runs that appear in TUNELAB_RUNS_DIR later; 0: only those at start
#   TUNELAB_BASE       base model to serve too (bundled name, model directory, or Hub id when online)
#   TUNELAB_HOST       address to bind (default 0.0.0.0: reachable from outside the container)
#   TUNELAB_PORT       port (default 8000)
#   TUNELAB_API_KEY    require `Authorization: Bearer KEY` (read by tunelab serve itself; /health stays open)
#   TUNELAB_MAX_BATCH_SIZE, TUNELAB_MAX_CONTEXT, TUNELAB_DATA_DIR, TUNELAB_MAX_JOBS: the serve options of
#                      those names (--max-batch-size, --max-context, --data-dir, --max-jobs), when set
set -eu

fail() {
    echo "error: entrypoint: $*" >&2
    exit 2
}

runs_dir=${TUNELAB_RUNS_DIR:-/runs}
given=$#  # the caller's arguments stay first; the ones built here are appended, then rotated behind them
set -- "$@" --host "${TUNELAB_HOST:-0.0.0.0}" --port "${TUNELAB_PORT:-8000}"
base=${TUNELAB_BASE:-}
[ -n "$base" ] && set -- "$@" --base "$base"
served=0

if [ -n "${TUNELAB_RUNS:-}" ]; then
    old_ifs=$IFS
    IFS=,
    for run in $TUNELAB_RUNS; do
        [ -n "$run" ] && set -- "$@" "$run" && served=$((served + 1))
    done
    IFS=$old_ifs
else
    [ -d "$runs_dir" ] || fail "TUNELAB_RUNS_DIR $runs_dir is not a directory (mount the runs volume there)"
    if [ -f "$runs_dir/config.yaml" ]; then  # the directory is one run
        set -- "$@" "${TUNELAB_MODEL_NAME:-$(basename "$runs_dir")}=$runs_dir"
        served=1
    else
        for dir in "$runs_dir"/*/; do
            dir=${dir%/}
            if [ -f "$dir/config.yaml" ] && [ -f "$dir/summary.json" ]; then  # a finished run
                set -- "$@" "$dir"
                served=$((served + 1))
            elif [ -f "$dir/config.json" ] && [ -z "$base" ]; then  # a plain model directory: the base
                base=$dir
                set -- "$@" --base "$dir"
            fi
        done
        [ "${TUNELAB_WATCH:-1}" = 1 ] && set -- "$@" --watch "$runs_dir"
    fi
fi
[ "$served" -gt 0 ] || [ -n "$base" ] || fail "nothing to serve: no finished run (config.yaml and summary.json) in \
$runs_dir, and neither TUNELAB_RUNS nor TUNELAB_BASE is set"

[ -n "${TUNELAB_MAX_BATCH_SIZE:-}" ] && set -- "$@" --max-batch-size "$TUNELAB_MAX_BATCH_SIZE"
[ -n "${TUNELAB_MAX_CONTEXT:-}" ] && set -- "$@" --max-context "$TUNELAB_MAX_CONTEXT"
[ -n "${TUNELAB_DATA_DIR:-}" ] && set -- "$@" --data-dir "$TUNELAB_DATA_DIR"
[ -n "${TUNELAB_MAX_JOBS:-}" ] && set -- "$@" --max-jobs "$TUNELAB_MAX_JOBS"
[ -z "${TUNELAB_API_KEY:-}" ] && unset TUNELAB_API_KEY  # an empty key would mean "no key" is the key

i=0
while [ "$i" -lt "$given" ]; do  # move the caller's arguments behind the built ones
    set -- "$@" "$1"
    shift
    i=$((i + 1))
done
exec python3 -m tunelab serve "$@"
