import { exportFilter } from './sluice-plugin/component.js';
import { DenyWords } from './deny-words.js';

export const { init, onFrame, flush } = exportFilter(DenyWords);
