import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stepLine } from '../../../bench/_report.ts';

const AT = new Date('2026-12-06T11:52:03.123Z');

test('a step line gives the time since the benchmark started, the time of day, and how long the previous step took', () => {
  assert.equal(
    stepLine('quitting DPDK txonly at 1500 B into net_vhost', 84_210, 81_190, AT),
    '[  84.21 s 11:52:03.123] quitting DPDK txonly at 1500 B into net_vhost (previous step 3.02 s)\n',
  );
});

test('the first step line has no previous step', () => {
  assert.equal(stepLine('starting paravirt serve net', 540, undefined, AT), '[   0.54 s 11:52:03.123] starting paravirt serve net\n');
});
