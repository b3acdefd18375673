// An MCP client on the official TypeScript SDK, for the gateway's tests: connects to the
// Streamable HTTP endpoint given as the first argument with `Authorization: Bearer
// $MCP_TOKEN`, runs the steps read from standard input (a JSON array), and prints one JSON
// array with what each step got. Steps: {"list": true} lists the tools; {"tool": NAME,
// "args": {...}} calls one. A step that fails prints its error and the next step runs.
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = new URL(process.argv[2]);
const steps = JSON.parse(readFileSync(0, "utf8"));
const headers = process.env.MCP_TOKEN ? { Authorization: `Bearer ${process.env.MCP_TOKEN}` } : {};
const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers } });
const client = new Client({ name: "sluice-test", version: "1.0.0" });
const out = [];
try {
  await client.connect(transport);
} catch (e) {
  console.log(JSON.stringify([{ connect_error: String(e?.message ?? e) }]));
  process.exit(0);
}
for (const step of steps) {
  try {
    if (step.list) {
      out.push({ tools: (await client.listTools()).tools });
    } else {
      const result = await client.callTool(
        { name: step.tool, arguments: step.args ?? {} },
        undefined,
        { timeout: 120000 },
      );
      out.push({ result });
    }
  } catch (e) {
    out.push({ error: String(e?.message ?? e), code: e?.code });
  }
}
console.log(JSON.stringify(out));
await client.close();
