#!/usr/bin/env python3
"""Agent figures (issue 19), release build, one gateway (async recording, the shipped policy)
reaching the same targets directly and through an agent (`sluice agent` on this machine, so
the figures are the agent hop's own cost, not a network's):

- round trip: type a line into an interactive `cat` and wait for it to come back, p50/p99,
  `sluice connect cat` vs `sluice connect cat-agent`;
- pgbench select-only (-S, -c 8 -j 2) against a throwaway server, through the gateway's
  direct connection vs its connection through the agent;
- the agent's resident memory, idle and with 100 idle sessions (TCP tunnels to a local
  listener, through `sluice connect tcp-agent --port`).

    cargo build --release && python3 benches/agents.py     # needs pgbench, initdb, pg_ctl
"""
import json, os, re, shutil, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sessions import ROOT, SLUICE, round_trips, summary  # noqa: E402

SECONDS = int(os.environ.get("SECONDS_PER_RUN", "15"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def as_pg(args, **kw):
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, stdout=subprocess.DEVNULL, **kw)


def wait_for(what, check, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def pgbench(port, token):
    out = subprocess.run(
        ["pgbench", "-n", "-S", "-c", "8", "-j", "2", "-T", str(SECONDS), "-h", "127.0.0.1",
         "-p", str(port), "-U", "bench", "postgres"],
        env=dict(os.environ, PGPASSWORD=token, PGSSLMODE="disable"),
        capture_output=True, text=True, check=True).stdout
    return round(float(re.search(r"tps = ([\d.]+)", out).group(1)))


def start_postgres(root, options=""):
    """A throwaway PostgreSQL server in ROOT/pg (trust, loopback): its port."""
    os.makedirs(os.path.join(root, "pg"))
    if os.geteuid() == 0:
        shutil.chown(os.path.join(root, "pg"), "postgres", "postgres")
    pg, pg_data = free_port(), os.path.join(root, "pg", "data")
    as_pg(["initdb", "-D", pg_data, "-U", "postgres", "--auth=trust"])
    as_pg(["pg_ctl", "-D", pg_data, "-o",
           f"-p {pg} -k {root}/pg -c listen_addresses=127.0.0.1 {options}",
           "-l", f"{root}/pg/log", "-w", "start"])
    return pg


def clean_up(procs, root):
    """Kills PROCS (newest first), stops the server in ROOT/pg, removes ROOT."""
    for p in reversed(procs):
        p.kill()
        p.wait()
    subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) +
                   ["pg_ctl", "-D", os.path.join(root, "pg", "data"), "-m", "immediate", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(root, ignore_errors=True)


def main():
    root = tempfile.mkdtemp(prefix="sluice-agents-")
    os.chmod(root, 0o755)
    procs = []
    try:
        pg = start_postgres(root, "-c max_connections=200")
        subprocess.run(["pgbench", "-i", "-s", "10", "-h", "127.0.0.1", "-p", str(pg), "-U",
                        "postgres", "postgres"], check=True, capture_output=True)

        # A local TCP service for the idle sessions: accepts and holds connections.
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(512)
        held = []

        gw_port, direct_pg, agent_pg = free_port(), free_port(), free_port()
        work = os.path.join(root, "gw")
        os.makedirs(work)
        shutil.copytree(os.path.join(ROOT, "policies"),
                        os.path.join(work, "policies"))
        cat = 'interactive = ["cat"]\nscript = ["bash", "-s"]\n'
        pgconn = f'kind = "postgres"\nupstream = "127.0.0.1:{pg}"\ndatabase = "postgres"\nuser = "postgres"\n'
        with open(os.path.join(work, "sluice.toml"), "w") as f:
            f.write(f'[gateway]\nlisten = "127.0.0.1:{gw_port}"\ndev_tokens = true\nrecord_mode = "async"\n'
                    f'max_connections_per_source = 1000\n\n'
                    f'[connections.cat]\nkind = "exec"\n{cat}\n'
                    f'[connections.cat-agent]\nkind = "exec"\nagent = "edge"\n{cat}\n'
                    f'[connections.pg]\n{pgconn}listen = "127.0.0.1:{direct_pg}"\n'
                    f'[connections.pg-agent]\n{pgconn}listen = "127.0.0.1:{agent_pg}"\nagent = "edge"\n'
                    f'[connections.tcp-agent]\nkind = "tcp"\nupstream = "127.0.0.1:{holder.getsockname()[1]}"\nagent = "edge"\n')
        with open(os.path.join(work, "policies", "bench.toml"), "w") as f:
            f.write('[chains]\npg-agent = ["sql-gate", "mask"]\ncat = ["mask"]\ncat-agent = ["mask"]\n')
        gw = subprocess.Popen([SLUICE, "serve"], cwd=work, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
        procs.append(gw)
        gw.stdout.readline()
        tokens = json.load(open(os.path.join(work, "sluice-data", "dev-tokens.json")))
        ca = os.path.join(work, "sluice-data", "tls", "ca.pem")
        env = dict(os.environ, SLUICE_GATEWAY=f"127.0.0.1:{gw_port}", SLUICE_TOKEN=tokens["user"],
                   SLUICE_CA=ca)
        admin = dict(env, SLUICE_TOKEN=tokens["reviewer"])
        added = subprocess.run([SLUICE, "agents", "add", "edge"], env=admin, capture_output=True,
                               text=True, check=True).stdout
        token = next(l for l in added.splitlines() if l.startswith("sluice-enroll-"))
        agent = subprocess.Popen([SLUICE, "agent", "--gateway", f"127.0.0.1:{gw_port}", "--ca", ca,
                                  "--state", os.path.join(root, "agent")],
                                 env=dict(os.environ, SLUICE_AGENT_TOKEN=token),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(agent)

        def connected():
            out = subprocess.run([SLUICE, "agents", "--json"], env=admin, capture_output=True,
                                 text=True).stdout
            return any(a["state"] == "connected" for a in json.loads(out or "[]"))
        wait_for("the agent connects", connected)

        results = {}
        for name in ["cat", "cat-agent"]:
            p = subprocess.Popen([SLUICE, "connect", name], cwd=work, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
            try:
                results[f"round_trip_{name}"] = summary(round_trips(p.stdin.fileno(), p.stdout.fileno()))
            finally:
                p.kill()
                p.wait()
        results["pgbench_select_only_tps_direct"] = pgbench(direct_pg, tokens["user"])
        results["pgbench_select_only_tps_agent"] = pgbench(agent_pg, tokens["user"])

        idle = rss_kib(agent.pid)
        tunnel_port = free_port()
        tunnel = subprocess.Popen([SLUICE, "connect", "tcp-agent", "--port", str(tunnel_port)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(tunnel)
        tunnel.stdout.readline()
        clients = []
        for _ in range(100):
            c = socket.create_connection(("127.0.0.1", tunnel_port))
            clients.append(c)
        holder.settimeout(30)
        while len(held) < 100:
            held.append(holder.accept()[0])

        def sessions():
            out = subprocess.run([SLUICE, "agents", "--json"], env=admin, capture_output=True,
                                 text=True).stdout
            return sum(a["sessions"] for a in json.loads(out or "[]"))
        wait_for("100 sessions on the agent", lambda: sessions() >= 100)
        results["agent_rss_kib_idle"] = idle
        results["agent_rss_kib_100_idle_sessions"] = rss_kib(agent.pid)
        for c in clients:
            c.close()
        print(json.dumps(results, indent=2))
    finally:
        clean_up(procs, root)


if __name__ == "__main__":
    sys.exit(main())
