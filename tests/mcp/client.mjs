// An MCP client on the official TypeScript SDK, for the gateway's tests: connects to the
// Streamable HTTP endpoint given as the first argument with `Authorization: Bearer
// $MCP_TOKEN` (or, after `stdio`, launches the command that follows and speaks MCP over its
// stdin and stdout, as most clients do with `sluice mcp NAME`), runs the steps read from standard input (a JSON array), and prints one JSON
// array with what each step got. Steps: {"list": true} lists the tools; {"tool": NAME,
// "args": {...}} calls one; {"until": PATH} waits (60 s at most) for a file to exist, so a
// test can act on the live session. A step that fails prints its error and the next runs.
import { existsSync, readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const steps = JSON.parse(readFileSync(0, "utf8"));
const headers = process.env.MCP_TOKEN ? { Authorization: `Bearer ${process.env.MCP_TOKEN}` } : {};
const transport =
  process.argv[2] === "stdio"
    ? new StdioClientTransport({
        command: process.argv[3],
        args: process.argv.slice(4),
        env: process.env,
        stderr: "inherit",
      })
    : new StreamableHTTPClientTransport(new URL(process.argv[2]), { requestInit: { headers } });
// With $MCP_MODEL_SAYS set, the client has a "model": it answers the server's sampling
// requests with that text, and its "person" accepts elicitation with { name: that text }.
const says = process.env.MCP_MODEL_SAYS;
const client = new Client(
  { name: "sluice-test", version: "1.0.0" },
  { capabilities: says === undefined ? {} : { sampling: {}, elicitation: { form: {} } } },
);
if (says !== undefined) {
  client.setRequestHandler(CreateMessageRequestSchema, async () => ({
    role: "assistant",
    content: { type: "text", text: says },
    model: "test-model",
  }));
  client.setRequestHandler(ElicitRequestSchema, async () => ({ action: "accept", content: { name: says } }));
}
const out = [];
try {
  await client.connect(transport);
} catch (e) {
  console.log(JSON.stringify([{ connect_error: String(e?.message ?? e) }]));
  process.exit(0);
}
for (const step of steps) {
  try {
    if (step.until) {
      const deadline = Date.now() + 60000;
      while (!existsSync(step.until) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      out.push({ waited: existsSync(step.until) });
    } else if (step.list) {
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
// Ends the MCP session (HTTP DELETE) where the server keeps one, then the connection.
await transport.terminateSession?.().catch(() => {});
await client.close();
