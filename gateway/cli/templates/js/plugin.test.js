import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FilterHarness, SessionKind } from './sluice-plugin/sluice-plugin.js';
import { Plugin } from './plugin.js';

const CONFIG = { forbidden: ['shutdown'], mask: 'CUST-[0-9]{8}' };

test('refuses forbidden words however the command arrives', () => {
  const shell = new FilterHarness(Plugin, CONFIG);
  assert.ok(shell.execScript('sudo shutdown now').isDeny());
  assert.ok(shell.typedLine('sudo shutdown now').isDeny());
  assert.ok(shell.typedLine('ls').isPass());
  const pg = new FilterHarness(Plugin, CONFIG, SessionKind.PG);
  assert.ok(pg.query('SELECT shutdown()').isDeny());
});

test('masks output and rows', () => {
  const shell = new FilterHarness(Plugin, CONFIG);
  assert.equal(shell.output('owner CUST-00123456\n').replacedText(), 'owner [masked]\n');
  const pg = new FilterHarness(Plugin, CONFIG, SessionKind.PG);
  assert.equal(pg.row(['CUST-00123456', null]).replacedText(), '[masked]\tNULL');
  assert.ok(pg.row(['nothing here']).isPass());
});

test('a bad pattern is refused', () => {
  assert.throws(() => new FilterHarness(Plugin, { mask: 'CUST-(' }));
});
