#!/usr/bin/env python3
"""Issue 16 item 4.10: what one plugin burning its deadline costs every other session.

A release gateway with two exec connections: `cat` (an interactive `cat` behind the shipped
masker) and `burn` (behind the `antics` test guest, whose `loop` frame computes until its
50 ms deadline stops it; the frame fails closed). Measured: the round trip of a line typed
into `cat` (p50, p99), alone and while BURNERS clients keep running `sluice exec burn --
loop` back to back.

    cargo build --release && python3 benches/starvation.py
    BURNERS=1 ROUNDS=300 python3 benches/starvation.py
"""
import json, os, shutil, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sessions  # noqa: E402  (its round trips, summaries and paths)

ROOT = sessions.ROOT
# SLUICE=path runs another build (a baseline) with the same script.
SLUICE = sessions.SLUICE = os.environ.get("SLUICE", sessions.SLUICE)
GUEST = os.path.join(ROOT, "target", "wasm", "wasm32-wasip2", "release", "antics.wasm")
BURNERS = int(os.environ.get("BURNERS", "2"))
sessions.ROUNDS = int(os.environ.get("ROUNDS", "300"))


def start_gateway(work, port):
    os.makedirs(os.path.join(work, "policies"))
    shutil.copy(os.path.join(ROOT, "policies", "default.toml"), os.path.join(work, "policies"))
    with open(os.path.join(work, "policies", "burn.toml"), "w") as f:
        f.write(f'[plugins.burner]\nsource = "{GUEST}"\ndeadline_ms = 50\n[chains]\nburn = ["burner"]\n'
                '[roles.burn]\nconnect = ["developers"]\n')
    with open(os.path.join(work, "sluice.toml"), "w") as f:
        f.write(f'[gateway]\nlisten = "127.0.0.1:{port}"\ndev_tokens = true\nrecord_mode = "async"\n\n'
                '[connections.cat]\nkind = "exec"\ninteractive = ["cat"]\nscript = ["bash", "-s"]\n\n'
                '[connections.burn]\nkind = "exec"\ninteractive = ["cat"]\nscript = ["bash", "-s"]\n')
    gw = subprocess.Popen([SLUICE, "serve"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    gw.stdout.readline()
    tokens = json.load(open(os.path.join(work, "sluice-data", "dev-tokens.json")))
    return gw, dict(os.environ, SLUICE_GATEWAY=f"127.0.0.1:{port}", SLUICE_TOKEN=tokens["user"])


def burn(env, cwd, stop, counts):
    while not stop.is_set():
        subprocess.run([SLUICE, "exec", "burn", "--", "loop"], cwd=cwd, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        counts.append(1)


def main():
    if not os.path.exists(GUEST):
        sys.exit(f"no {GUEST}: build the test guests (cargo build --release) first")
    root = tempfile.mkdtemp(prefix="sluice-starve-")
    try:
        work = os.path.join(root, "gw")
        gw, env = start_gateway(work, 7646)
        try:
            results = {"alone": sessions.summary(sessions.gateway_round_trips(env, work))}
            stop, counts = threading.Event(), []
            burners = [threading.Thread(target=burn, args=(env, work, stop, counts)) for _ in range(BURNERS)]
            for b in burners:
                b.start()
            started = time.monotonic()
            try:
                results[f"with_{BURNERS}_burners"] = sessions.summary(sessions.gateway_round_trips(env, work))
            finally:
                window = time.monotonic() - started
                stop.set()
                for b in burners:
                    b.join()
            results["burning_sessions_per_s"] = round(len(counts) / window, 1)
            results["window_s"] = round(window, 1)
        finally:
            gw.kill()
            gw.wait()
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
