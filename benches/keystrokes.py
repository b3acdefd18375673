#!/usr/bin/env python3
"""Typing through the gateway (issue 25): replays an interactive shell session at typing
speed, one key at a time, and reports what the gateway adds to each key's echo and to each
command's answer, as percentiles, against the same shell in a local terminal.

- A key's latency: from writing it to seeing the shell's echo of it (readline echoes each key).
- A command's latency: from writing Enter to seeing the next prompt (the command ran and its
  output came back).

The session replayed is, by default, a shell session of everyday commands typed at about 8
keys/s with a seeded jitter (`benches/support/typed-session.txt`, one command per line). To
replay a session Sluice recorded instead, give its export: `SESSION=export.jsonl` (from
`sluice export ID --format jsonl`); its input frames are typed key by key with the gaps the
record shows (each capped at 1 s).

    cargo build --release && python3 benches/keystrokes.py

`MODES="strict async"` picks the gateway's record modes; `KEYS_PER_SECOND=8` the speed.
"""
import json, os, pty, random, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sessions import ROOT, SLUICE, read_until, start_gateway  # noqa: E402

PROMPT = b"typed$ "
SHELL = ["env", "-i", "PATH=/usr/bin:/bin", "TERM=dumb", "PS1=typed$ ", "INPUTRC=/dev/null",
         "bash", "--norc", "--noprofile", "-i"]
KEYS_PER_SECOND = float(os.environ.get("KEYS_PER_SECOND", "8"))


def builtin_session():
    """(pause before the key in s, key) for each key of the built-in session."""
    rng = random.Random(25)
    with open(os.path.join(ROOT, "benches", "support", "typed-session.txt")) as f:
        commands = [line.rstrip("\n") for line in f if line.strip()]
    keys = []
    for command in commands:
        for ch in command.encode() + b"\r":
            keys.append((rng.uniform(0.5, 1.5) / KEYS_PER_SECOND, bytes([ch])))
    return keys


def recorded_session(path):
    """The input frames of an exported session, key by key, with the recorded gaps."""
    keys, last = [], None
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            meta = event.get("meta", {})
            if event.get("kind") != "frame" or meta.get("dir") != "in" or meta.get("content") != "bytes":
                continue
            at = event["time_ms"] / 1000
            gap = 0.0 if last is None else min(max(at - last, 0.0), 1.0)
            last = at
            for i, ch in enumerate(bytes.fromhex(event.get("payload_hex", ""))):
                keys.append((gap if i == 0 else 1 / KEYS_PER_SECOND, bytes([ch])))
            if keys:
                keys.append((1 / KEYS_PER_SECOND, b"\r"))
    return keys


def replay(write_fd, read_fd, keys):
    """Types `keys`; returns (key echo latencies, command latencies) in µs."""
    read_until(read_fd, PROMPT, timeout=30)
    echoes, commands = [], []
    for pause, key in keys:
        time.sleep(pause)
        start = time.perf_counter()
        os.write(write_fd, key)
        if key == b"\r":
            read_until(read_fd, PROMPT)
            commands.append((time.perf_counter() - start) * 1e6)
        else:
            read_until(read_fd, key)
            echoes.append((time.perf_counter() - start) * 1e6)
    return echoes, commands


def percentiles(times):
    q = statistics.quantiles(times, n=100)
    return {"p50_us": round(q[49]), "p90_us": round(q[89]), "p99_us": round(q[98])}


def direct(keys):
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(SHELL[0], SHELL)
    try:
        return replay(fd, fd, keys)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def through_gateway(env, cwd, keys):
    p = subprocess.Popen([SLUICE, "connect", "typing"], cwd=cwd, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return replay(p.stdin.fileno(), p.stdout.fileno(), keys)
    finally:
        p.kill()
        p.wait()


def main():
    session = os.environ.get("SESSION")
    keys = recorded_session(session) if session else builtin_session()
    modes = os.environ.get("MODES", "strict async").split()
    connection = '[connections.typing]\nkind = "exec"\ninteractive = %s\nscript = ["bash", "-s"]\n' % json.dumps(SHELL)
    root = tempfile.mkdtemp(prefix="sluice-typing-")
    try:
        echoes, commands = direct(keys)
        base = {"key_echo": percentiles(echoes), "command": percentiles(commands)}
        results = {"keys": len(keys), "commands": len(commands), "direct": base}
        for port, mode in zip(range(7646, 7650), modes):
            gw, env = start_gateway(os.path.join(root, mode), port, mode, connection)
            try:
                echoes, commands = through_gateway(env, os.path.join(root, mode), keys)
            finally:
                gw.kill()
                gw.wait()
            measured = {"key_echo": percentiles(echoes), "command": percentiles(commands)}
            added = {what: {p: measured[what][p] - base[what][p] for p in base[what]} for what in base}
            results[f"gateway_{mode}"] = measured
            results[f"added_{mode}"] = added
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
