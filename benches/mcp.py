#!/usr/bin/env python3
"""MCP figures (issue 23), release build, one run, everything on this machine: latency of a
`tools/call` (p50, p99 over 2,000 calls in turn) and calls per second (in turn, and with 8
clients calling at once) against tests/mcp/server.mjs straight (the baseline) and through the
gateway's `kind = "mcp"` connection with the shipped masker on it (the result of every call
is masked and each call and result recorded), strict and async record modes: first over
stdio (`command`), then the same server over Streamable HTTP (`url`).

    cargo build --release && (cd tests/mcp && npm ci) && python3 benches/mcp.py
"""
import json, os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sessions import ROOT, SLUICE  # noqa: E402

BENCH = os.path.join(ROOT, "benches", "mcp.mjs")


def run(args, env=None):
    out = subprocess.run(["node", BENCH, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def through_gateway(work, mode, server):
    """`server`: the connection's lines that name its server (`command` or `url`)."""
    os.makedirs(work)
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(work, "policies"))
    with open(os.path.join(work, "policies", "bench.toml"), "w") as f:
        f.write('[chains]\nnotes = ["mask"]\n')
    with open(os.path.join(work, "sluice.toml"), "w") as f:
        f.write(f'[gateway]\nlisten = "127.0.0.1:0"\ndev_tokens = true\nrecord_mode = "{mode}"\n\n'
                f'[connections.notes]\nkind = "mcp"\n{server}')
    gw = subprocess.Popen([SLUICE, "serve"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        https = gw.stdout.readline().rsplit("https://", 1)[1].strip()
        tokens = json.load(open(os.path.join(work, "sluice-data", "dev-tokens.json")))
        env = dict(os.environ, MCP_TOKEN=tokens["user"],
                   NODE_EXTRA_CA_CERTS=os.path.join(work, "sluice-data", "tls", "ca.pem"))
        return run(["gateway", f"https://{https}/mcp/notes"], env)
    finally:
        gw.terminate()
        gw.wait()


def main():
    work = tempfile.mkdtemp()
    description = os.path.join(work, "description.txt")
    with open(description, "w") as f:
        f.write("Echoes its text.")
    stdio = f'command = ["node", "{ROOT}/tests/mcp/server.mjs", "{description}"]\n'
    rows = [("straight to the server over stdio (baseline)", run(["direct", description]))]
    for mode in ["strict", "async"]:
        rows.append((f"through the gateway, {mode}", through_gateway(os.path.join(work, mode), mode, stdio)))
    # The same server over Streamable HTTP: straight, and behind a `url` connection.
    token = "bench-upstream-token"
    server = subprocess.Popen(["node", os.path.join(ROOT, "tests", "mcp", "server.mjs"), description, "--http"],
                              env=dict(os.environ, UPSTREAM_TOKEN=token), stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().split()[1]}/mcp"
        rows.append(("straight to the server over HTTP (baseline)",
                     run(["gateway", url], dict(os.environ, MCP_TOKEN=token))))
        http = f'url = "{url}"\nheaders = {{ Authorization = "Bearer {token}" }}\n'
        for mode in ["strict", "async"]:
            rows.append((f"through the gateway to it over HTTP, {mode}",
                         through_gateway(os.path.join(work, f"http-{mode}"), mode, http)))
    finally:
        server.terminate()
        server.wait()
    print("| path | p50 / p99 | calls/s in turn | calls/s, 8 clients |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['p50_us']:,} / {r['p99_us']:,} µs | {r['sequential_per_s']:,} | {r['concurrent_per_s']:,} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
