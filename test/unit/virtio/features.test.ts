import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Feature, featureBit } from '../../../src/virtio/constants.ts';
import {
  FRAMEWORK_FEATURES,
  checkImplementable,
  describeFeatures,
  featureBits,
  featureMask,
  refuseFeatures,
} from '../../../src/virtio/features.ts';

const V1 = featureBit(Feature.VERSION_1);

test('features are named by their §6 name, the device\'s name, or their bit number', () => {
  assert.equal(describeFeatures(V1 | featureBit(Feature.RING_PACKED) | 0b1001n, { 3: 'BLK_SIZE_MAX' }), 'bit 0, BLK_SIZE_MAX, VERSION_1, RING_PACKED');
  assert.equal(describeFeatures(0n), 'none');
  assert.deepEqual(featureBits(featureBit(63) | 1n), [0, 63]);
});

test('feature masks are built from bit numbers 0..63 only', () => {
  assert.equal(featureMask([0, 32]), 1n | V1);
  assert.throws(() => featureMask([64]), /feature bit 64 is not an integer from 0 to 63/);
  assert.throws(() => featureMask([1.5]), /feature bit 1.5/);
});

test('a side may use device-specific bits and the reserved bits the framework implements, nothing else', () => {
  checkImplementable(FRAMEWORK_FEATURES | 0xffffffn | featureBit(50) | featureBit(63), 'device x');
  assert.throws(
    () => checkImplementable(featureBit(Feature.NOTIFICATION_DATA), 'device x'),
    /device x: feature NOTIFICATION_DATA is not implemented by the virtio framework/,
  );
  assert.throws(() => checkImplementable(featureBit(45), 'driver y'), /driver y: feature bit 45 is not implemented/);
  assert.throws(() => checkImplementable(1n << 64n, 'driver y'), /do not fit in 64 bits/);
});

test('FEATURES_OK is refused for bits not offered or without VERSION_1, with the reason', () => {
  assert.equal(refuseFeatures(V1 | 0b11n, V1 | 0b01n), undefined);
  assert.equal(refuseFeatures(V1 | 0b01n, V1 | 0b10n), 'driver accepted features the device did not offer: bit 1');
  assert.equal(refuseFeatures(V1 | 0b01n, 0b01n), 'driver did not accept VERSION_1');
});
