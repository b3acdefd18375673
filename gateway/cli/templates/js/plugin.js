// `{{name}}`: a Sluice filter plugin. It refuses commands that contain a forbidden word and
// masks a pattern in what targets send back. Change both to what you need.
import { Content, Filter, Interest, Kind, Verdict, text } from './sluice-plugin/sluice-plugin.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class Plugin extends Filter {
  // Once per session: read the config (the plugin's table in the policy) and compile
  // patterns here, not per frame. Throwing refuses the config.
  constructor(config, session) {
    super(config, session);
    const unknown = Object.keys(config).filter((k) => !['forbidden', 'mask', 'replacement'].includes(k));
    if (unknown.length > 0) throw new Error(`unknown settings: ${unknown.join(', ')}`); // a typo is an error
    if (typeof config.mask !== 'string') throw new Error('`mask` (a pattern) is required');
    this.forbidden = config.forbidden ?? [];
    this.mask = new RegExp(config.mask, 'g');
    this.replacement = config.replacement ?? '[masked]';
  }

  // The frames to judge (docs/plugins.md, "What each session sends"). Commands: a one-shot
  // script or a SQL query is a statement; a line typed at a terminal is a line (at Enter).
  // Output: a program prints bytes; PostgreSQL sends rows, and errors as lines.
  // Each verdict depends on its frame alone, so the plugin is stateless: set it to false
  // once it keeps anything between frames (buffered bytes, counters).
  interest() {
    return new Interest({
      clientToTarget: [Kind.STATEMENT, Kind.LINE],
      targetToClient: [Kind.BYTES, Kind.ROW, Kind.LINE],
      stateless: true,
    });
  }

  onFrame(frame) {
    const { kind, value } = frame.content;
    if (frame.direction === 'client-to-target') {
      const command = text(frame.content) ?? '';
      const word = this.forbidden.find((w) => command.includes(w));
      return word === undefined ? Verdict.pass() : Verdict.deny(`\`${word}\` is not allowed here`);
    }
    const mask = (s) => s.replace(this.mask, this.replacement);
    if (kind === Kind.BYTES || kind === Kind.LINE) {
      const before = kind === Kind.BYTES ? decoder.decode(value) : value;
      const after = mask(before);
      if (after === before) return Verdict.pass();
      return Verdict.replace(kind === Kind.BYTES ? Content.bytes(encoder.encode(after)) : Content.line(after));
    }
    if (kind === Kind.ROW) {
      let changed = false;
      const cells = value.map((cell) => {
        if (cell === undefined) return cell;
        const before = decoder.decode(cell);
        const after = mask(before);
        changed ||= after !== before;
        return encoder.encode(after);
      });
      return changed ? Verdict.replace(Content.row(cells)) : Verdict.pass();
    }
    return Verdict.pass();
  }
}
