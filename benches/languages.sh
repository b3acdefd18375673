#!/usr/bin/env bash
# Issue 18: the same filter in Rust, Python and JavaScript (the `sluice plugin new`
# template of each), measured in one run: component size, compile time, per-call time,
# per-session instance time, memory, and how many sessions the pool holds; and the author's
# times from `plugin new` to a passing native test and to the plugin enabled in a running
# gateway (`sluice reload` returning).
#
#   benches/languages.sh            (release build; needs componentize-py and npm: the tests
#                                    install them into target/tools and tests/plugin-js)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --release -q
sluice="$repo/target/release/sluice"
export PATH="$repo/target/release:$repo/target/tools/python/bin:$PATH"
command -v componentize-py >/dev/null || { echo "componentize-py missing: run the tests once (cargo test --test all -- languages)"; exit 1; }
[ -d tests/plugin-js/node_modules ] || npm ci --no-audit --no-fund --prefix tests/plugin-js
work=$(mktemp -d)
gateway=
trap 'kill "$gateway" 2>/dev/null || true; rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

cd "$work"
t0=$(now); "$sluice" plugin new bench-rust >/dev/null
(cd bench-rust && CARGO_TARGET_DIR="$work/rust-target" cargo test -q >/dev/null 2>&1); t1=$(now)
echo "rust: plugin new to a passing native test: $(secs "$t0" "$t1") s (cold build of its dependencies)"
(cd bench-rust && CARGO_TARGET_DIR="$work/rust-target" cargo build -q --release --target wasm32-wasip2)
rust_wasm="$work/rust-target/wasm32-wasip2/release/bench_rust.wasm"

t0=$(now); "$sluice" plugin new bench-python --lang python >/dev/null
(cd bench-python && python3 -m unittest -q 2>/dev/null); t1=$(now)
echo "python: plugin new to a passing native test: $(secs "$t0" "$t1") s"
(cd bench-python && componentize-py -d wit -w filter componentize app -o bench_python.wasm >/dev/null)

t0=$(now); "$sluice" plugin new bench-js --lang js >/dev/null
ln -s "$repo/tests/plugin-js/node_modules" bench-js/node_modules
(cd bench-js && npm test --silent >/dev/null); t1=$(now)
echo "js: plugin new to a passing native test: $(secs "$t0" "$t1") s (npm install not counted)"
(cd bench-js && npm run --silent build >/dev/null)

# Enabled in a running gateway: build, copy the snippet, `sluice reload` (which compiles it).
mkdir -p gw/policies && cp "$repo/policies/default.toml" gw/policies/
cat > gw/sluice.toml <<TOML
[gateway]
listen = "127.0.0.1:0"
data_dir = "data"
policies = "policies"
dev_tokens = true
[connections.shell]
kind = "exec"
interactive = ["bash", "-i"]
script = ["bash", "-s"]
TOML
(cd gw && "$sluice" serve --config sluice.toml > serve.out 2>serve.err &)
for _ in $(seq 100); do grep -q reviewer gw/serve.out 2>/dev/null && break; sleep 0.1; done
gateway=$(pgrep -f "sluice serve --config sluice.toml" | head -1)
export SLUICE_GATEWAY=$(head -1 gw/serve.out | sed 's|.*https://||') SLUICE_CA="$work/gw/data/tls/ca.pem"
export SLUICE_TOKEN=$(grep "reviewer:" gw/serve.out | sed 's/.*SLUICE_TOKEN=//')
for lang in rust python js; do
  case $lang in
    rust) build() { (cd bench-rust && CARGO_TARGET_DIR="$work/rust-target" cargo build -q --release --target wasm32-wasip2); }; wasm=$rust_wasm ;;
    python) build() { (cd bench-python && componentize-py -d wit -w filter componentize app -o bench_python.wasm >/dev/null); }; wasm="$work/bench-python/bench_python.wasm" ;;
    js) build() { (cd bench-js && npm run --silent build >/dev/null); }; wasm="$work/bench-js/bench_js.wasm" ;;
  esac
  touch bench-$lang/*.py bench-$lang/*.js bench-$lang/src/lib.rs 2>/dev/null || true
  t0=$(now)
  build
  sed "s|source = .*|source = \"$wasm\"|; s|^shell = .*|shell = [\"bench-$lang\"]|" "bench-$lang/sluice-policy.toml" > gw/policies/zz-$lang.toml
  "$sluice" reload >/dev/null
  t1=$(now)
  echo "$lang: rebuild to enabled in the running gateway (build + sluice reload): $(secs "$t0" "$t1") s"
  rm gw/policies/zz-$lang.toml
done

# Memory an instance keeps per call: 300,000 masked frames through each (plugin run, default
# 64 MiB limit), as the template says (stateless: renewed before the limit) and with the
# template's `stateless` turned off (kept until a call fails at the limit).
python3 -c "import json
for i in range(300000): print(json.dumps({'direction': 'target-to-client', 'bytes': 'x' * 170 + ' owner CUST-00123456'}))" > frames.jsonl
summary='import json, sys
lang = sys.argv[1]
r = [json.loads(l) for l in sys.stdin if l.startswith("{\"seq")]
mem = [x["memory_bytes"] for x in r]
denied = sum(1 for x in r if x["verdict"] != "replace")
renewed = sum(1 for x in r if x.get("renewed"))
mean = sum(x["time_us"] for x in r) / len(r)
print(f"{lang}: {len(r)} frames, fresh {mem[0]} B, peak {max(mem)} B, renewed {renewed} times, {denied} failed closed, mean call {mean:.1f} us (renewals included)")'
for pair in "rust=$rust_wasm" "python=$work/bench-python/bench_python.wasm" "js=$work/bench-js/bench_js.wasm"; do
  lang=${pair%%=*}; wasm=${pair#*=}
  "$sluice" plugin run "$wasm" --config mask='CUST-[0-9]{8}' < frames.jsonl 2>/dev/null | python3 -c "$summary" "$lang (stateless)"
done
sed -i 's/stateless: true/stateless: false/' bench-js/plugin.js
(cd bench-js && npm run --silent build >/dev/null)
"$sluice" plugin run "$work/bench-js/bench_js.wasm" --config mask='CUST-[0-9]{8}' < frames.jsonl 2>/dev/null | python3 -c "$summary" "js (keeps state)"

cd "$repo"
SLUICE_BENCH_PLUGINS="rust=$rust_wasm,python=$work/bench-python/bench_python.wasm,js=$work/bench-js/bench_js.wasm" \
  cargo bench -q -p sluice --bench plugin_host -- languages 2>&1 | grep -E "^(rust|python|js):|languages/|time:"
