import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PollWindow } from '../../../src/virtio/poll-window.ts';

/** A clock the test moves by hand, in milliseconds. */
function manualClock(): { now: () => number; advance(ms: number): void } {
  let t = 1000;
  return {
    now: () => t,
    advance(ms) {
      t += ms;
    },
  };
}

/**
 * One look at the ring that finds `found` pieces of work, `emptyMs` after the previous look's
 * work was done, then `workMs` spent on them: whether the side polls on.
 */
function burst(poll: PollWindow, clock: ReturnType<typeof manualClock>, emptyMs: number, found: number, workMs: number): boolean {
  clock.advance(emptyMs);
  poll.look();
  clock.advance(workMs);
  return poll.keepPolling(found);
}

test('a budget of 0 never polls, however close together work comes', () => {
  const clock = manualClock();
  const poll = new PollWindow(0, clock.now);
  assert.equal(poll.enabled, false);
  for (let i = 0; i < 5; i++) assert.equal(burst(poll, clock, 0, 1, 0), false);
  assert.equal(poll.currentMs, 0);
});

test('work after a quiet spell does not start polling; work that follows within the budget grows the window', () => {
  const clock = manualClock();
  const poll = new PollWindow(100, clock.now);
  assert.equal(burst(poll, clock, 0, 1, 0.001), false, 'the first work after a quiet spell');
  assert.equal(burst(poll, clock, 0.01, 1, 0.001), true, 'work again within the budget: poll on');
  const grown = poll.currentMs;
  assert.ok(grown > 0);
  assert.equal(burst(poll, clock, 0, 0, 0), true, 'an empty look at once: still within the window');
  assert.equal(poll.currentMs, grown, 'an empty look does not change the window');
});

test('the time spent working through a burst is not counted as a gap', () => {
  const clock = manualClock();
  // Budget 100 µs; each burst takes 0.5 ms of work, five times the budget, and the ring is empty
  // for 10 µs between bursts: polling catches every burst.
  const poll = new PollWindow(100, clock.now);
  burst(poll, clock, 0, 32, 0.5);
  for (let i = 0; i < 10; i++) burst(poll, clock, 0.01, 32, 0.5);
  assert.ok(poll.currentMs >= 0.01, `the window (${poll.currentMs} ms) covers the 10 µs the ring stays empty`);
  assert.ok(poll.currentMs <= 0.1, 'and stays within the budget');
  // Between bursts the side polls for the window, measured from the end of its work.
  clock.advance(poll.currentMs / 2);
  poll.look();
  assert.equal(poll.keepPolling(0), true, 'half the window after the work ended: poll on');
  clock.advance(poll.currentMs);
  poll.look();
  assert.equal(poll.keepPolling(0), false, 'past the window: sleep');
});

test('the window grows to cover gaps within the budget, no further, and halves on a gap beyond it', () => {
  const clock = manualClock();
  const poll = new PollWindow(100, clock.now);
  burst(poll, clock, 0, 1, 0);
  for (let i = 0; i < 20; i++) burst(poll, clock, 0.03, 1, 0.2);
  const settled = poll.currentMs;
  assert.ok(settled >= 0.03 && settled < 0.06, `the window (${settled} ms) covers a 30 µs gap, at most twice over`);
  assert.equal(burst(poll, clock, 0.03, 1, 0.2), true);
  assert.equal(poll.currentMs, settled, 'a gap within the window changes nothing');
  burst(poll, clock, 0.5, 1, 0);
  assert.equal(poll.currentMs, settled / 2, 'a 500 µs gap is beyond the budget: the window halves');
  for (let i = 0; i < 20; i++) burst(poll, clock, 0.5, 1, 0);
  assert.equal(poll.currentMs, 0, 'a peer that keeps pausing is not polled for');
  assert.equal(burst(poll, clock, 0.5, 1, 0), false);
});

test('without a look announced, the look is taken to be when keepPolling is called', () => {
  const clock = manualClock();
  const poll = new PollWindow(100, clock.now);
  burst(poll, clock, 0, 1, 0);
  clock.advance(0.01);
  assert.equal(poll.keepPolling(1), true, 'work 10 µs after the last: poll on');
  clock.advance(1);
  assert.equal(poll.keepPolling(0), false, 'a millisecond later, empty: sleep');
});

test('a budget that is not a non-negative number is refused', () => {
  assert.throws(() => new PollWindow(-1), /poll budget -1 µs is not a non-negative number/);
  assert.throws(() => new PollWindow(Number.NaN), /poll budget NaN µs/);
});
