// The component's entry: what componentize-js builds (`npm run build`).
import { exportFilter } from './sluice-plugin/component.js';
import { Plugin } from './plugin.js';

export const { init, onFrame, flush } = exportFilter(Plugin);
