#!/usr/bin/env python3
"""Session figures (issue 3), release build, against the same program without the gateway:

- round trip: type a line into an interactive `cat` and wait for it to come back
  (terminal echo + cat's output), p50 and p99, through `sluice connect` vs a local PTY;
- throughput: `cat` of a 200 MB file through `sluice exec` (recording on, the shipped
  policy's plugin in the chain) vs `cat` run directly.

Both through the gateway in strict mode (each frame forwarded after its durable commit, the
default) and async mode.

    cargo build --release && python3 benches/sessions.py

`POLICIES=DIR` runs the gateway with another policy folder than the shipped one; `SLUICE=PATH`
another build of `sluice` (for the gateway and the client alike).
"""
import json, os, pty, select, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.environ.get("SLUICE", os.path.join(ROOT, "target", "release", "sluice"))
ROUNDS = 500
SIZE = 200 * 1000 * 1000


def read_until(fd, needle, timeout=10.0):
    buf, deadline = b"", time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"waited for {needle!r}, got {buf[-200:]!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError(buf[-200:])
        buf += chunk
    return buf


def round_trips(write_fd, read_fd):
    times = []
    for i in range(ROUNDS):
        line = f"ping-{i:05d}".encode()
        start = time.perf_counter()
        os.write(write_fd, line + b"\r")
        read_until(read_fd, line + b"\r\n" + line)  # the terminal's echo, then cat's copy
        times.append((time.perf_counter() - start) * 1e6)
    return times


def summary(times):
    q = statistics.quantiles(times, n=100)
    return {"p50_us": round(q[49]), "p99_us": round(q[98])}


def direct_round_trips():
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("cat", ["cat"])
    try:
        return round_trips(fd, fd)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def gateway_round_trips(env, cwd):
    p = subprocess.Popen([SLUICE, "connect", "cat"], cwd=cwd, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return round_trips(p.stdin.fileno(), p.stdout.fileno())
    finally:
        p.kill()
        p.wait()


def throughput(cmd, **kw):
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, **kw)
    return SIZE / 1e6 / (time.perf_counter() - start)


def start_gateway(work, port, mode, connections=""):
    os.makedirs(work)
    # POLICIES=DIR measures with another policy folder (say, one whose chains are empty).
    shutil.copytree(os.environ.get("POLICIES", os.path.join(ROOT, "policies")), os.path.join(work, "policies"))
    with open(os.path.join(work, "sluice.toml"), "w") as f:
        f.write(f'[gateway]\nlisten = "127.0.0.1:{port}"\ndev_tokens = true\nrecord_mode = "{mode}"\n\n'
                '[connections.shell]\nkind = "exec"\ninteractive = ["bash", "-i"]\nscript = ["bash", "-s"]\n\n'
                '[connections.cat]\nkind = "exec"\ninteractive = ["cat"]\nscript = ["bash", "-s"]\n\n' + connections)
    gw = subprocess.Popen([SLUICE, "serve"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    gw.stdout.readline()
    tokens = json.load(open(os.path.join(work, "sluice-data", "dev-tokens.json")))
    return gw, dict(os.environ, SLUICE_GATEWAY=f"127.0.0.1:{port}", SLUICE_TOKEN=tokens["user"])


def main():
    root = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        big = os.path.join(root, "big.txt")
        with open(big, "wb") as f:
            line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\n"
            f.write(line * (SIZE // len(line)) + b"x" * (SIZE % len(line)))
        results = {
            "round_trip_direct": summary(direct_round_trips()),
            "cat_200MB_direct_MBps": round(throughput(["cat", big])),
        }
        for port, mode in [(7644, "strict"), (7645, "async")]:
            work = os.path.join(root, mode)
            gw, env = start_gateway(work, port, mode)
            try:
                results[f"round_trip_gateway_{mode}"] = summary(gateway_round_trips(env, work))
                cmd = [SLUICE, "exec", "shell", "--", "cat", big]
                results[f"cat_200MB_gateway_{mode}_MBps"] = round(throughput(cmd, cwd=work, env=env))
            finally:
                gw.kill()
                gw.wait()
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
