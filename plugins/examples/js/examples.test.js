import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FilterHarness, SessionKind } from './sluice-plugin/sluice-plugin.js';
import { DenyWords } from './deny-words.js';
import { MaskIds } from './mask-ids.js';

test('masks output, rows and error text', () => {
  const shell = new FilterHarness(MaskIds);
  assert.equal(shell.output('owner CUST-00123456\n').replacedText(), 'owner [customer]\n');
  assert.ok(shell.output('nothing here').isPass());
  const pg = new FilterHarness(MaskIds, {}, SessionKind.PG);
  assert.equal(pg.row(['CUST-00123456', null]).replacedText(), '[customer]\tNULL');
});

test('refuses a word however the command arrives', () => {
  const shell = new FilterHarness(DenyWords, { words: ['shutdown'] });
  assert.ok(shell.execScript('sudo shutdown now').isDeny());
  assert.ok(shell.typedLine('sudo shutdown now').isDeny());
  assert.ok(shell.typedLine('ls').isPass());
  const pg = new FilterHarness(DenyWords, { words: ['payroll'] }, SessionKind.PG);
  assert.ok(pg.query('SELECT * FROM payroll').isDeny());
});

test('a bad config is refused', () => {
  assert.throws(() => new FilterHarness(DenyWords, { words: 'shutdown' }), /list of strings/);
});
