// An example masker in JavaScript: customer ids (`CUST-` and eight digits) in what targets
// send become `[customer]`, in program output, PostgreSQL rows and error text alike.
import { Content, Filter, Interest, Kind, Verdict } from './sluice-plugin/sluice-plugin.js';

const IDS = /CUST-[0-9]{8}/g;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class MaskIds extends Filter {
  constructor(config, session) {
    super(config, session);
    this.replacement = config.replacement ?? '[customer]';
  }

  interest() {
    return new Interest({ targetToClient: [Kind.BYTES, Kind.ROW, Kind.LINE], stateless: true });
  }

  onFrame(frame) {
    const { kind, value } = frame.content;
    const mask = (s) => s.replace(IDS, this.replacement);
    if (kind === Kind.BYTES) {
      const before = decoder.decode(value);
      const after = mask(before);
      return after === before ? Verdict.pass() : Verdict.replace(Content.bytes(encoder.encode(after)));
    }
    if (kind === Kind.LINE) {
      const after = mask(value);
      return after === value ? Verdict.pass() : Verdict.replace(Content.line(after));
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
