// Write Sluice filter plugins in JavaScript.
//
// The same contract as the Rust SDK (wit/plugin.wit), in plain JavaScript: a plugin is a
// subclass of `Filter`, exported with `exportFilter`, built into a component with
// componentize-js, and tested natively (node --test) with `FilterHarness`:
//
//   import { Filter, Verdict, Kind, Interest, exportFilter } from './sluice-plugin.js';
//   class NoDrop extends Filter {
//     interest() { return new Interest({ clientToTarget: [Kind.STATEMENT, Kind.LINE] }); }
//     onFrame(frame) {
//       return text(frame.content).includes('DROP') ? Verdict.deny('no DROP') : Verdict.pass();
//     }
//   }
//   export const { init, onFrame, flush } = exportFilter(NoDrop);
//
// One instance serves one session: fields of the filter are per-session state.

export const Direction = Object.freeze({
  CLIENT_TO_TARGET: 'client-to-target',
  TARGET_TO_CLIENT: 'target-to-client',
});

// The kinds of content a frame can carry; a content is `{ kind, value }`.
export const Kind = Object.freeze({
  BYTES: 'bytes',
  LINE: 'line',
  STATEMENT: 'statement',
  COLUMNS: 'columns',
  ROW: 'row',
  FILE: 'file',
  TOOL_CALL: 'tool-call',
  TOOL_RESULT: 'tool-result',
  HTTP_REQUEST: 'http-request',
  HTTP_RESPONSE: 'http-response',
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const Content = Object.freeze({
  bytes: (data) => ({ kind: Kind.BYTES, value: typeof data === 'string' ? encoder.encode(data) : data }),
  line: (text) => ({ kind: Kind.LINE, value: text }),
  statement: (text, params = []) => ({ kind: Kind.STATEMENT, value: { text, params } }),
  columns: (columns) => ({ kind: Kind.COLUMNS, value: columns }),
  // Cells: Uint8Array, or undefined for NULL.
  row: (cells) => ({ kind: Kind.ROW, value: cells }),
});

// The content as text where it is text: bytes and file data, a line, a statement's text,
// a row's cells joined by tabs (NULL for undefined), a tool call's arguments or a tool
// result's output; otherwise undefined.
export function text(content) {
  const v = content.value;
  switch (content.kind) {
    case Kind.BYTES: return decoder.decode(v);
    case Kind.LINE: return v;
    case Kind.STATEMENT: return v.text;
    case Kind.ROW: return v.map((c) => (c === undefined ? 'NULL' : decoder.decode(c))).join('\t');
    case Kind.COLUMNS: return v.map((c) => c.name).join('\t');
    case Kind.FILE: return decoder.decode(v.data);
    case Kind.TOOL_CALL: return v.arguments;
    case Kind.TOOL_RESULT: return v.output;
    default: return undefined;
  }
}

// `stateless: true` says each verdict depends on its frame (and the config) alone: the
// gateway may then replace the instance with a fresh one between calls, which it does before
// memory the engine keeps per call reaches the plugin's limit. Leave it false for a plugin
// that keeps anything between frames (buffered bytes, counters).
//
// `prescreen: { kinds, patterns }` keeps frames of those kinds from the plugin unless one of
// the patterns (Rust regex syntax, ASCII classes; `literal(text)` escapes a word) matches one
// of their texts: the gateway runs the test natively, so frames the plugin cannot act on cost
// no call. Name only what every frame the plugin acts on contains.
export class Interest {
  constructor({ clientToTarget = [], targetToClient = [], stateless = false, prescreen } = {}) {
    this.clientToTarget = clientToTarget;
    this.targetToClient = targetToClient;
    this.stateless = stateless;
    this.prescreen = prescreen;
  }
  static all() {
    const every = Object.values(Kind);
    return new Interest({ clientToTarget: every, targetToClient: every });
  }
  wants(direction, kind) {
    const kinds = direction === Direction.CLIENT_TO_TARGET ? this.clientToTarget : this.targetToClient;
    return kinds.includes(kind);
  }
}

// `text` as a prescreen pattern that matches it literally.
export function literal(text) {
  return text.replace(/[\\.+*?()|[\]{}^$#&\-~]/g, '\\$&');
}

export class Verdict {
  constructor(action, { content, reason } = {}) {
    this.action = action; // 'pass' | 'replace' | 'hold' | 'deny'
    this.content = content;
    this.reason = reason;
    this.recordAs = undefined;
  }
  static pass() { return new Verdict('pass'); }
  static replace(content) { return new Verdict('replace', { content }); }
  static hold(reason) { return new Verdict('hold', { reason }); }
  static deny(reason) { return new Verdict('deny', { reason }); }
  // The record and the sinks get `content` instead of what is forwarded.
  recorded(content) { this.recordAs = content; return this; }
  isPass() { return this.action === 'pass'; }
  isDeny() { return this.action === 'deny'; }
  isHold() { return this.action === 'hold'; }
  replacedText() { return this.action === 'replace' ? text(this.content) : undefined; }
  recordedText() { return this.recordAs ? text(this.recordAs) : undefined; }
}

// What each kind of session sends (docs/plugins.md, "What each session sends").
export const SessionKind = Object.freeze({
  EXEC_SCRIPT: { name: 'exec-script', protocol: 'exec' },
  TERMINAL: { name: 'terminal', protocol: 'exec' },
  PG: { name: 'pg', protocol: 'postgres' },
  TCP: { name: 'tcp', protocol: 'tcp' },
});

// The client-to-target contents the gateway makes of `input` in a session of `kind`.
export function inputFrames(kind, input) {
  if (kind === SessionKind.EXEC_SCRIPT || kind === SessionKind.PG) return [Content.statement(input)];
  if (kind === SessionKind.TCP) return [Content.bytes(input)];
  const frames = [];
  for (const line of input.match(/[^\r\n]*(\r\n|\r|\n)|[^\r\n]+$/g) ?? []) {
    const typed = line.replace(/[\r\n]+$/, '');
    if (typed.length > 0) frames.push(Content.bytes(typed));
    if (typed.length < line.length && typed.trim().length > 0) frames.push(Content.line(typed));
  }
  return frames;
}

// A plugin that sees every frame of one session. Subclass it: the constructor gets the
// plugin's policy table (an object) and the session, and throws to refuse them;
// `interest()` names the frames to see (default: all); `onFrame(frame)` returns a Verdict;
// `flush(direction)` returns what the plugin still buffers, or undefined.
export class Filter {
  constructor(config, session) {}
  interest() { return Interest.all(); }
  onFrame(frame) { return Verdict.pass(); }
  flush(direction) { return undefined; }
}

// Native tests: drive a Filter the way the gateway does. A prescreen is not applied: the
// plugin must be right on every frame of its interest by itself (`sluice plugin run` applies
// it as the gateway does).
export class FilterHarness {
  constructor(Plugin, config = {}, kind = SessionKind.EXEC_SCRIPT) {
    const session = { id: 'test-session', connection: 'test', protocol: kind.protocol };
    this.plugin = new Plugin(typeof config === 'string' ? JSON.parse(config || '{}') : config, session);
    this.interest = this.plugin.interest();
    this.seq = { [Direction.CLIENT_TO_TARGET]: 1, [Direction.TARGET_TO_CLIENT]: 1 };
  }
  send(direction, content) {
    const seq = this.seq[direction]++;
    if (!this.interest.wants(direction, content.kind)) return Verdict.pass();
    return this.plugin.onFrame({ seq, direction, timestampMs: 0, content });
  }
  inputAs(kind, input) {
    let last = Verdict.pass();
    for (const content of inputFrames(kind, input)) {
      const verdict = this.send(Direction.CLIENT_TO_TARGET, content);
      if (verdict.isDeny() || verdict.isHold()) return verdict;
      last = verdict;
    }
    return last;
  }
  execScript(script) { return this.inputAs(SessionKind.EXEC_SCRIPT, script); }
  typedLine(line) { return this.inputAs(SessionKind.TERMINAL, `${line}\n`); }
  query(sql) { return this.inputAs(SessionKind.PG, sql); }
  output(textOut) { return this.send(Direction.TARGET_TO_CLIENT, Content.bytes(textOut)); }
  row(cells) {
    return this.send(Direction.TARGET_TO_CLIENT, Content.row(cells.map((c) => (c === null || c === undefined ? undefined : encoder.encode(c)))));
  }
  flush(direction) { return this.plugin.flush(direction); }
}

// The component's exports for `Plugin`: `export const { init, onFrame, flush } = exportFilter(P)`.
// Contents cross as the bindings' `{ tag, val }` variants; only the tag's name differs.
export function exportFilter(Plugin) {
  let plugin;
  const toMine = (c) => ({ kind: c.tag, value: c.val });
  const toWit = (c) => (c === undefined ? undefined : { tag: c.kind, val: c.value });
  const failed = (during, error) => {
    // Named to the gateway as the plugin's failure, then the call traps (fails closed).
    log('error', `panicked: ${during}: ${error && error.stack ? error.stack : error}`, { panic: 'true' });
  };
  return {
    init(config, session) {
      try {
        plugin = new Plugin(config.trim() ? JSON.parse(config) : {}, session);
        const interest = plugin.interest();
        return {
          clientToTarget: interest.clientToTarget,
          targetToClient: interest.targetToClient,
          stateless: Boolean(interest.stateless),
          prescreen: interest.prescreen && {
            kinds: [...interest.prescreen.kinds],
            patterns: interest.prescreen.patterns.map(String),
          },
        };
      } catch (error) {
        // The result's error case: the session (or the config) is refused with this text.
        throw String(error && error.message ? error.message : error);
      }
    },
    onFrame(frame) {
      try {
        const verdict = plugin.onFrame({ ...frame, content: toMine(frame.content) });
        const action = verdict.action === 'replace' ? { tag: 'replace', val: toWit(verdict.content) }
          : verdict.action === 'hold' || verdict.action === 'deny' ? { tag: verdict.action, val: verdict.reason ?? '' }
          : { tag: 'pass' };
        return { action, recordAs: toWit(verdict.recordAs) };
      } catch (error) {
        failed('onFrame', error);
        throw error;
      }
    },
    flush(direction) {
      try {
        return toWit(plugin.flush(direction));
      } catch (error) {
        failed('flush', error);
        throw error;
      }
    },
  };
}

// Into the gateway's log, tagged with the plugin and the session (natively: the console).
let hostLog;
export function setHostLog(fn) { hostLog = fn; }
export function log(level, message, fields = {}) {
  if (hostLog) hostLog(level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));
  else console.error(`[${level}] ${message}`, fields);
}
