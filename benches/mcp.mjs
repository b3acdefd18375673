// MCP figures (issue 23): `tools/call` latency and calls per second against a small MCP
// server (tests/mcp/server.mjs, its `echo` tool) straight over stdio (the baseline) and
// through the gateway's `mcp` connection at /mcp/NAME (Streamable HTTP; the call and its
// result cross the chain and are recorded). Run by benches/mcp.py, which starts the gateway.
//
//   node benches/mcp.mjs direct DESCRIPTION_FILE
//   node benches/mcp.mjs gateway URL            (MCP_TOKEN, NODE_EXTRA_CA_CERTS set)
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(join(root, "tests/mcp/package.json"));
const { Client } = await import(require.resolve("@modelcontextprotocol/sdk/client/index.js"));
const { StdioClientTransport } = await import(require.resolve("@modelcontextprotocol/sdk/client/stdio.js"));
const { StreamableHTTPClientTransport } = await import(
  require.resolve("@modelcontextprotocol/sdk/client/streamableHttp.js")
);

const [mode, target] = process.argv.slice(2);
const SEQUENTIAL = 2000;
const CONCURRENT = 8;
const PER_WORKER = 500;

const connect = async () => {
  const transport =
    mode === "direct"
      ? new StdioClientTransport({ command: "node", args: [join(root, "tests/mcp/server.mjs"), target] })
      : new StreamableHTTPClientTransport(new URL(target), {
          requestInit: { headers: { Authorization: `Bearer ${process.env.MCP_TOKEN}` } },
        });
  const client = new Client({ name: "sluice-bench", version: "1.0.0" });
  await client.connect(transport);
  await client.listTools();
  return { client, transport };
};
const call = (client, i) => client.callTool({ name: "echo", arguments: { text: `card 4242424242424242 #${i}` } });

const { client, transport } = await connect();
for (let i = 0; i < 200; i++) await call(client, i); // warm up
const times = [];
for (let i = 0; i < SEQUENTIAL; i++) {
  const start = process.hrtime.bigint();
  await call(client, i);
  times.push(Number(process.hrtime.bigint() - start) / 1000);
}
times.sort((a, b) => a - b);
const pct = (p) => Math.round(times[Math.min(times.length - 1, Math.floor((times.length * p) / 100))]);
const sequentialRate = SEQUENTIAL / (times.reduce((a, b) => a + b, 0) / 1e6);

// Several clients at once, each calling in turn: what the server side sustains.
const workers = await Promise.all(Array.from({ length: CONCURRENT }, connect));
const start = process.hrtime.bigint();
await Promise.all(
  workers.map(async ({ client }) => {
    for (let i = 0; i < PER_WORKER; i++) await call(client, i);
  }),
);
const concurrentRate = (CONCURRENT * PER_WORKER) / (Number(process.hrtime.bigint() - start) / 1e9);
for (const w of [...workers, { client, transport }]) {
  await w.transport.terminateSession?.().catch(() => {});
  await w.client.close();
}
console.log(
  JSON.stringify({ p50_us: pct(50), p99_us: pct(99), sequential_per_s: Math.round(sequentialRate), concurrent_per_s: Math.round(concurrentRate) }),
);
