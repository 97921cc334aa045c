#!/usr/bin/env bash
# kill -9 crash test for the key-state store candidates (docs/adr/0003-storage-engine.md).
#
# usage: tests/storage-crash/run.sh ENGINE ITERATIONS      ENGINE = sled | redb
#
# Per iteration: start a writer on the SAME store as every earlier iteration,
# let it commit for a random 50-1500 ms, kill -9 it, keep the ACK lines it
# printed (each printed only after its transaction was durable), then open the
# store and check every ACK accumulated so far plus every record present.
# Stops at the first failure, printing the evidence and keeping a copy of the
# store; otherwise prints a summary at the end.
#
# Environment (all optional):
#   WORK_DIR     where the store, ACK file and logs go
#                (default: target/storage-crash/ENGINE-<timestamp>)
#   WRITER_ARGS  extra arguments for `storage-crash write`, e.g.
#                "--group-commit --threads 8" (the KMS's commit pattern)
#   SLED_API     batch | tx | alternate (default): how sled writers make each
#                batch atomic before flush(); alternate switches every iteration
#   SEED         seeds the sleep sequence (bash RANDOM) to repeat a schedule;
#                the kill still lands wherever the writer happens to be
#   BIN          a prebuilt storage-crash binary (default: cargo build --release)
#   CHECK_EVERY  check after every Nth kill only (default 1). With N > 1 the
#                next writer opens the store straight after a kill -9, so the
#                engine recovers from crash after crash with no clean close in
#                between (the checker's open and close is a clean shutdown);
#                the last iteration is always checked
#
# Exit status: 0 all iterations clean, 1 a check failed or a writer died on
# its own, 2 usage.
#
# Not covered: power loss (kill -9 leaves the page cache to the kernel, so it
# tests the engine's crash atomicity and recovery, not fsync ordering), and
# several writer processes on one store (neither engine's default open mode
# allows a second writer process).
set -euo pipefail

usage() { echo "usage: $0 sled|redb ITERATIONS" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
ENGINE=$1
ITERATIONS=$2
[[ $ENGINE == sled || $ENGINE == redb ]] || usage
[[ $ITERATIONS =~ ^[1-9][0-9]*$ ]] || usage

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -z ${BIN:-} ]]; then
    cargo build --quiet --release -p storage-crash --manifest-path "$ROOT/Cargo.toml"
    BIN=$ROOT/target/release/storage-crash
fi
WORK=${WORK_DIR:-$ROOT/target/storage-crash/$ENGINE-$(date +%Y%m%d-%H%M%S)}
SEED=${SEED:-$$}
SLED_API=${SLED_API:-alternate}
CHECK_EVERY=${CHECK_EVERY:-1}
[[ $CHECK_EVERY =~ ^[1-9][0-9]*$ ]] || usage
read -r -a EXTRA <<<"${WRITER_ARGS:-}"
RANDOM=$SEED

mkdir -p "$WORK"
STORE=$WORK/store
ACKS=$WORK/acks.all
LOG=$WORK/run.log
: >"$ACKS"

say() { echo "$*" | tee -a "$LOG"; }

say "storage-crash run: engine=$ENGINE iterations=$ITERATIONS seed=$SEED sled_api=$SLED_API check_every=$CHECK_EVERY writer_args='${WRITER_ARGS:-}'"
say "work dir: $WORK   binary: $BIN   host: $(nproc) cores, $(uname -r)"

total_acked=0
start=$(date +%s)
done_iters=0

summary() {
    local status=$1
    say "SUMMARY engine=$ENGINE status=$status iterations_completed=$done_iters/$ITERATIONS" \
        "records_acked=$total_acked elapsed_s=$(( $(date +%s) - start ))" \
        "store_bytes=$(du -sb "$STORE" 2>/dev/null | cut -f1)"
}

fail() {
    local iter=$1 what=$2
    say "FAILURE at iteration $iter: $what"
    say "--- check output ---"
    [[ -f $WORK/check.out ]] && tee -a "$LOG" <"$WORK/check.out"
    say "--- writer stderr (this iteration) ---"
    tee -a "$LOG" <"$WORK/writer.err"
    if cp -a "$STORE" "$WORK/failed-store-iter-$iter" 2>/dev/null; then
        say "store as the check found it kept in $WORK/failed-store-iter-$iter"
    fi
    summary FAILED
    exit 1
}

for ((i = 1; i <= ITERATIONS; i++)); do
    args=(write --engine "$ENGINE" --dir "$STORE")
    api=-
    if [[ $ENGINE == sled ]]; then
        api=$SLED_API
        if [[ $api == alternate ]]; then
            if ((i % 2)); then api=batch; else api=tx; fi
        fi
        args+=(--sled-api "$api")
    fi
    sleep_ms=$((50 + RANDOM % 1451))

    rm -f "$WORK/check.out"
    "$BIN" "${args[@]}" "${EXTRA[@]}" >"$WORK/iter.acks" 2>"$WORK/writer.err" &
    pid=$!
    sleep "$((sleep_ms / 1000)).$(printf %03d $((sleep_ms % 1000)))"
    if ! kill -0 "$pid" 2>/dev/null; then
        rc=0
        wait "$pid" || rc=$?
        fail "$i" "writer exited on its own (status $rc) before the kill"
    fi
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true

    # Only whole lines count: a line without its newline was never fully acknowledged.
    n=$(wc -l <"$WORK/iter.acks")
    head -n "$n" "$WORK/iter.acks" >>"$ACKS"
    total_acked=$((total_acked + n))

    if ((i % CHECK_EVERY != 0 && i != ITERATIONS)); then
        echo "iter=$i sleep_ms=$sleep_ms sled_api=$api acked_this_iter=$n acked_total=$total_acked check=skipped" >>"$LOG"
        done_iters=$i
        continue
    fi
    rc=0
    "$BIN" check --engine "$ENGINE" --dir "$STORE" --acks "$ACKS" >"$WORK/check.out" 2>&1 || rc=$?
    open_line=$(grep -m1 '^open:' "$WORK/check.out" || true)
    echo "iter=$i sleep_ms=$sleep_ms sled_api=$api acked_this_iter=$n acked_total=$total_acked check_rc=$rc ${open_line#open: }" >>"$LOG"
    if ((rc != 0)); then
        fail "$i" "check exited $rc after the writer was killed at ${sleep_ms} ms (sled_api=$api)"
    fi
    done_iters=$i
    if ((i % 10 == 0)); then
        echo "... $i/$ITERATIONS done, $total_acked records acked" >&2
    fi
done

tail -n 8 "$WORK/check.out" | tee -a "$LOG"
summary CLEAN
