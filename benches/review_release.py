#!/usr/bin/env python3
"""Review release across nodes (issue 21), release build: two gateways (nodes a and b) on one
shared PostgreSQL record (a throwaway cluster), the shipped policy (the shell gate holds
`rm -r` of absolute paths). One interactive shell session runs on node a; each round types a
held command into it, waits until the review is pending, then a reviewer approves it either on
node a itself (the baseline) or on node b, where the frame does not wait. The figure is the
time from sending the approval to the command's output reaching the client, p50/p99 of each,
rounds interleaved.

The approval is an HTTPS POST on a kept-alive connection (no CLI start in the figure), the
same way on both nodes, so the difference is what crossing nodes costs (node b records the
decision and tells node a through PostgreSQL's LISTEN/NOTIFY).

    cargo build --release && python3 benches/review_release.py   # needs initdb, pg_ctl
"""
import http.client, json, os, ssl, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sessions import ROOT, SLUICE, read_until, summary  # noqa: E402
from agents import clean_up, free_port, start_postgres, wait_for  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "100"))


class Api:
    """One kept-alive HTTPS connection to a node's API, as the reviewer."""

    def __init__(self, port, ca, token):
        context = ssl.create_default_context(cafile=ca)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method, path):
        self.conn.request(method, path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {body[:200]!r}")
        return json.loads(body)


def main():
    root = tempfile.mkdtemp(prefix="sluice-review-release-")
    os.chmod(root, 0o755)
    procs = []
    try:
        pg = start_postgres(root)
        for key in ["cluster.key", "connections.key"]:
            with open(os.path.join(root, key), "w") as f:
                f.write(os.urandom(32).hex())

        nodes = {}
        for name in ["a", "b"]:
            work = os.path.join(root, name)
            os.makedirs(work)
            port = free_port()
            with open(os.path.join(work, "sluice.toml"), "w") as f:
                f.write(f'[gateway]\nlisten = "127.0.0.1:{port}"\ndev_tokens = true\n'
                        f'policies = "{ROOT}/policies"\nconnections_key = "{root}/connections.key"\n\n'
                        f'[store]\nkind = "postgres"\nurl = "postgres://postgres@127.0.0.1:{pg}/postgres"\n'
                        f'node = "{name}"\ncluster_key = "{root}/cluster.key"\n\n'
                        '[connections.shell]\nkind = "exec"\ninteractive = ["bash", "--norc", "-i"]\n'
                        'script = ["bash", "-s"]\nenv = { PS1 = "$ " }\n')
            gw = subprocess.Popen([SLUICE, "serve"], cwd=work, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
            procs.append(gw)
            gw.stdout.readline()  # listening
            tokens = json.load(open(os.path.join(work, "sluice-data", "dev-tokens.json")))
            ca = os.path.join(work, "sluice-data", "tls", "ca.pem")
            nodes[name] = (port, ca, tokens)

        port_a, ca_a, tokens = nodes["a"]
        env = dict(os.environ, SLUICE_GATEWAY=f"127.0.0.1:{port_a}", SLUICE_TOKEN=tokens["user"],
                   SLUICE_CA=ca_a)
        shell = subprocess.Popen([SLUICE, "connect", "shell"], env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(shell)
        read_until(shell.stdout.fileno(), b"$ ", timeout=30)
        # The reviewer's connections; each node's dev tokens are its own, and each node
        # serves its own TLS certificate.
        watch = Api(port_a, ca_a, tokens["reviewer"])
        deciders = {name: Api(port, ca, t["reviewer"]) for name, (port, ca, t) in nodes.items()}

        times = {"same_node": [], "other_node": []}
        for i in range(ROUNDS * 2):
            where = "same_node" if i % 2 == 0 else "other_node"
            target = os.path.join(root, f"scratch-{i}")
            os.makedirs(target)
            # `rel""eased` so the terminal's echo of the line never matches the output.
            os.write(shell.stdin.fileno(), f'rm -rf {target}; echo rel""eased-{i}\r'.encode())
            found = []

            def pending():
                found[:] = [r["id"] for r in watch.call("GET", "/api/reviews?status=pending")
                            if target in r["text"]]
                return found
            wait_for(f"review {i} is pending", pending)
            decider = deciders["a" if where == "same_node" else "b"]
            start = time.perf_counter()
            decider.call("POST", f"/api/reviews/{found[0]}/approve")
            read_until(shell.stdout.fileno(), f"released-{i}\r\n".encode(), timeout=30)
            times[where].append((time.perf_counter() - start) * 1e6)
            assert not os.path.exists(target)
        print(json.dumps({k: summary(v) for k, v in times.items()}, indent=2))
    finally:
        clean_up(procs, root)


if __name__ == "__main__":
    sys.exit(main())
