#!/usr/bin/env python3
"""SSH figures (issue 22), release build, one run, everything on this machine:

- interactive round trip (p50, p99): type a line into `cat` running in a terminal on a
  throwaway OpenSSH server, and wait for it to come back (the remote terminal's echo, then
  cat's copy), through
    * `ssh` straight to the server (the baseline),
    * `ssh` to the gateway's SSH front door, on a `kind = "ssh"` connection to that server,
    * `sluice connect` on the same connection,
  each in strict mode (every frame forwarded once its commit is durable, the default) and
  async mode;
- `scp` of a 200 MB file up to the server and back down (MB/s), straight and through the
  front door (the record keeps each file's path, size and SHA-256, and each chunk's offset
  and size: `file_contents = "none"`, the default), strict and async.

    cargo build --release && python3 benches/ssh.py
"""
import json, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sessions import ROOT, SLUICE, read_until, round_trips, summary  # noqa: E402


def sshd(work):
    """A throwaway sshd on a free port; its port, host key line, client key, process."""
    os.makedirs("/run/sshd", exist_ok=True)
    for name in ["host_key", "client_key"]:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{work}/{name}"], check=True)
    shutil.copy(f"{work}/client_key.pub", f"{work}/authorized_keys")
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with open(f"{work}/sshd_config", "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host_key\nPidFile {work}/sshd.pid\n"
                f"AuthorizedKeysFile {work}/authorized_keys\nStrictModes no\nUsePAM no\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\nPrintMotd no\nLogLevel ERROR\n"
                "Subsystem sftp internal-sftp\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{work}/sshd_config"],
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    host_key = open(f"{work}/host_key.pub").read().split()[:2]
    return port, " ".join(host_key), f"{work}/client_key", proc


def gateway(work, mode, upstream_port, host_key, client_key):
    os.makedirs(work)
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(work, "policies"))
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(work, "sluice.toml"), "w") as f:
        f.write(f'[gateway]\nlisten = "127.0.0.1:0"\nssh_listen = "127.0.0.1:0"\ndev_tokens = true\n'
                f'record_mode = "{mode}"\n\n'
                f'[connections.box]\nkind = "ssh"\nupstream = "127.0.0.1:{upstream_port}"\nuser = "{user}"\n'
                f'host_key = "{host_key}"\nprivate_key = "{client_key}"\n')
    gw = subprocess.Popen([SLUICE, "serve"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    https = gw.stdout.readline().rsplit("https://", 1)[1].strip()
    ssh_port = None
    while ssh_port is None:
        line = gw.stdout.readline()
        if line.startswith("SSH front door on ssh://"):
            ssh_port = int(line.split("ssh://", 1)[1].split(",")[0].rsplit(":", 1)[1])
    tokens = json.load(open(os.path.join(work, "sluice-data", "dev-tokens.json")))
    askpass = os.path.join(work, "askpass")
    with open(askpass, "w") as f:
        f.write(f"#!/bin/sh\necho {tokens['user']}\n")
    os.chmod(askpass, 0o755)
    env = dict(os.environ, SLUICE_GATEWAY=https, SLUICE_TOKEN=tokens["user"],
               SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force")
    return gw, ssh_port, env


SSH = ["ssh", "-F", "/dev/null", "-tt", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR"]


def cat_round_trips(cmd, env=None, cwd=None):
    """Starts a shell through `cmd`, turns it into `cat`, and times lines through it."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env=env, cwd=cwd)
    try:
        os.write(p.stdin.fileno(), b"exec cat\r")
        # cat is running once a line comes back twice in a row (the terminal's echo, cat's
        # copy); lines typed before that were echoed ahead, so try fresh ones.
        for n in range(60):
            line = f"warm-up-{n}".encode()
            os.write(p.stdin.fileno(), line + b"\r")
            try:
                read_until(p.stdout.fileno(), line + b"\r\n" + line, timeout=0.5)
                break
            except TimeoutError:
                continue
        else:
            raise TimeoutError("cat never answered")
        return round_trips(p.stdin.fileno(), p.stdout.fileno())
    finally:
        p.kill()
        p.wait()


SIZE_MB = 200


def scp_rates(cmd, remote, work, env=None):
    """MB/s of `cmd` (scp and its options up to the destination) copying a 200 MB file up to
    `remote` (`user@host:`) and back; each copy checked whole."""
    src = os.path.join(work, "payload")
    if not os.path.exists(src):
        with open(src, "wb") as f:
            for _ in range(SIZE_MB):
                f.write(os.urandom(1 << 20))
    remote_path = os.path.join(work, "remote-copy")
    back = os.path.join(work, "back")
    rates = {}
    for direction, args in [("upload", [src, f"{remote}{remote_path}"]),
                            ("download", [f"{remote}{remote_path}", back])]:
        start = time.perf_counter()
        subprocess.run(cmd + args, check=True, env=env, stdout=subprocess.DEVNULL)
        rates[direction] = round(SIZE_MB * (1 << 20) / 1e6 / (time.perf_counter() - start), 1)
    if os.path.getsize(back) != os.path.getsize(src) or open(back, "rb").read() != open(src, "rb").read():
        raise RuntimeError("the copy that came back differs")
    os.remove(remote_path)
    os.remove(back)
    return rates


SCP = ["scp", "-F", "/dev/null", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR"]


def main():
    root = tempfile.mkdtemp(prefix="sluice-ssh-bench-")
    results = {}
    upstream = None
    try:
        port, host_key, client_key, upstream = sshd(root)
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        results["round_trip_direct_ssh"] = summary(cat_round_trips(
            SSH + ["-i", client_key, "-p", str(port), f"{user}@127.0.0.1"]))
        results["scp_direct_mb_s"] = scp_rates(
            SCP + ["-i", client_key, "-P", str(port)], f"{user}@127.0.0.1:", root)
        for mode in ["strict", "async"]:
            work = os.path.join(root, mode)
            gw, ssh_port, env = gateway(work, mode, port, host_key, client_key)
            try:
                results[f"round_trip_front_door_{mode}"] = summary(cat_round_trips(
                    SSH + ["-o", "PubkeyAuthentication=no", "-p", str(ssh_port), "box@127.0.0.1"], env=env))
                results[f"round_trip_sluice_connect_{mode}"] = summary(cat_round_trips(
                    [SLUICE, "connect", "box"], env=env, cwd=work))
                results[f"scp_front_door_{mode}_mb_s"] = scp_rates(
                    SCP + ["-o", "PubkeyAuthentication=no", "-P", str(ssh_port)], "box@127.0.0.1:", root,
                    env=env)
            finally:
                gw.kill()
                gw.wait()
        print(json.dumps(results, indent=2))
    finally:
        if upstream:
            upstream.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
