// An example gate in JavaScript: commands that contain a forbidden word are refused, whether
// they come as a one-shot script or SQL (statements) or are typed at a terminal (lines).
import { Filter, Interest, Kind, Verdict, literal, text } from './sluice-plugin/sluice-plugin.js';

export class DenyWords extends Filter {
  constructor(config, session) {
    super(config, session);
    this.words = config.words ?? [];
    if (!Array.isArray(this.words) || !this.words.every((w) => typeof w === 'string')) {
      throw new Error('`words` must be a list of strings');
    }
  }

  interest() {
    // A command without one of the words passes uncalled: the gateway looks for them.
    const kinds = [Kind.STATEMENT, Kind.LINE];
    const prescreen = { kinds, patterns: this.words.map(literal) };
    return new Interest({ clientToTarget: kinds, stateless: true, prescreen });
  }

  onFrame(frame) {
    const command = text(frame.content) ?? '';
    const word = this.words.find((w) => command.includes(w));
    return word === undefined ? Verdict.pass() : Verdict.deny(`\`${word}\` is not allowed here`);
  }
}
