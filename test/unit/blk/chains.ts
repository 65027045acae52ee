/** Descriptor chains built by hand over a fresh guest memory, as a ring would produce them. */
import { ChainBuilder } from '../../../src/virtio/chain.ts';
import { GuestMemory } from '../../../src/virtio/memory.ts';
import type { DescriptorChain } from '../../../src/virtio/queue.ts';

export interface Part {
  readonly bytes: Uint8Array | number;
  readonly writable?: boolean;
}

/** A chain whose descriptors hold `parts` in order (a number is that many zero bytes). */
export function chainOf(parts: readonly Part[]): DescriptorChain {
  const sizes = parts.map((p) => (typeof p.bytes === 'number' ? p.bytes : p.bytes.length));
  // One spare byte so that a zero-length descriptor at the end still lies inside guest memory.
  const memory = GuestMemory.allocate(sizes.reduce((a, b) => a + b, 0) + 1);
  const builder = new ChainBuilder(memory, 'test', 1);
  let addr = 0;
  parts.forEach((p, i) => {
    if (typeof p.bytes !== 'number') memory.write(addr, p.bytes);
    builder.add(addr, sizes[i], p.writable ?? false, parts.length);
    addr += sizes[i];
  });
  return builder.build(0, parts.length);
}
