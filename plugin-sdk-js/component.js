// The component's side of the SDK: wires `log` to the gateway's log import. A plugin's
// component entry is `export const { init, onFrame, flush } = exportFilter(Plugin)` with
// `exportFilter` from here; its Filter class lives in a module of its own, which native
// tests import without this file (the import below exists only inside the component).
import { log as hostLog } from 'sluice:plugin/log@0.4.0';
import { setHostLog } from './sluice-plugin.js';

setHostLog(hostLog);

export { exportFilter } from './sluice-plugin.js';
