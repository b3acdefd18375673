#!/usr/bin/env bash
# Issue 17: how long a rebuild takes after touching one line in a file, for `cargo build
# --release` and `cargo test --no-run` (the test binary and the library's unit tests), on a
# warm target/. Run from the repository root:
#
#   benches/rebuild.sh                      # the files below
#   benches/rebuild.sh gateway/engine/src/tcp.rs   # others
#
# Touching means appending a comment line (then removing it), so the compiler sees a change.
set -euo pipefail
cd "$(dirname "$0")/.."
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(gateway/engine/src/pg/session.rs plugins/mask/src/masker.rs gateway/record/src/verify.rs)
fi
cargo build --release -q 2>/dev/null
cargo test --workspace --no-run -q 2>/dev/null
for file in "${files[@]}"; do
    for what in "build --release" "test --workspace --no-run"; do
        cargo $what -q 2>/dev/null   # warm: only the touched file differs
        cp "$file" "$file.orig"
        echo "// rebuild probe $(date +%s%N)" >> "$file"
        start=$(date +%s.%N)
        cargo $what -q 2>/dev/null
        end=$(date +%s.%N)
        mv "$file.orig" "$file"
        printf '%-40s cargo %-26s %6.1f s\n' "$file" "$what" "$(echo "$end - $start" | bc)"
    done
done
# Leave target/ built for the files as they are.
cargo build --release -q 2>/dev/null
cargo test --workspace --no-run -q 2>/dev/null
