import { exportFilter } from './sluice-plugin/component.js';
import { MaskIds } from './mask-ids.js';

export const { init, onFrame, flush } = exportFilter(MaskIds);
