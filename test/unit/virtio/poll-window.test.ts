import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PollWindow } from '../../../src/virtio/poll-window.ts';

test('a budget of 0 never polls, however close together work comes', () => {
  const poll = new PollWindow(0);
  assert.equal(poll.enabled, false);
  for (let i = 0; i < 5; i++) assert.equal(poll.keepPolling(1), false);
  assert.equal(poll.currentMs, 0);
});

test('work after a quiet spell does not start polling; work that follows within the budget grows the window', () => {
  // A budget of 1000 s: every gap in this test is within it.
  const poll = new PollWindow(1e9);
  assert.equal(poll.keepPolling(1), false, 'the first work after a quiet spell');
  assert.equal(poll.keepPolling(1), true, 'work again within the budget: poll on');
  const grown = poll.currentMs;
  assert.ok(grown > 0);
  poll.keepPolling(0);
  assert.ok(poll.currentMs >= grown, 'an empty look does not shrink the window');
});

test('a budget that is not a non-negative number is refused', () => {
  assert.throws(() => new PollWindow(-1), /poll budget -1 µs is not a non-negative number/);
  assert.throws(() => new PollWindow(Number.NaN), /poll budget NaN µs/);
});
