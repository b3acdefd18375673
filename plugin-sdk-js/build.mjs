// Builds a plugin component: `node sluice-plugin/build.mjs ENTRY.component.js OUT.wasm`.
// componentize-js (from npm) runs the entry module once and snapshots the engine (wizer), so
// a session's instance starts initialized. It reads modules only inside the entry's folder,
// so the folder is copied first with symlinks resolved (the repository's examples link the
// SDK in). WASI's HTTP is left out: filters may not import it.
import { componentize } from '@bytecodealliance/componentize-js';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const [entry, out, world = 'filter'] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: node build.mjs ENTRY.component.js OUT.wasm [filter|sink]');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const copy = await mkdtemp(join(tmpdir(), 'sluice-plugin-'));
try {
  await cp(dirname(resolve(entry)), copy, {
    recursive: true,
    dereference: true,
    filter: (path) => !path.includes('node_modules'),
  });
  const { component } = await componentize({
    sourcePath: join(copy, basename(entry)),
    witPath: process.env.SLUICE_WIT ?? join(here, '..', 'wit'),
    worldName: world,
    disableFeatures: ['http', 'fetch-event'],
  });
  await writeFile(out, component);
} finally {
  await rm(copy, { recursive: true, force: true });
}
