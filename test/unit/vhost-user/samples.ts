/** Generators shared by the codec tests: one arbitrary per payload layout, and whole valid messages. */
import fc from 'fast-check';
import { BackendRequest, FrontendRequest, MAX_CONFIG_SIZE, MAX_MEMORY_REGIONS } from '../../../src/transports/vhost-user/constants.ts';
import { messageRules, type MemoryRegionDescription, type Payload, type PayloadKind, type Stream } from '../../../src/transports/vhost-user/messages.ts';

const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const u32 = fc.nat({ max: 0xffff_ffff });
const u16 = fc.nat({ max: 0xffff });
const u8 = fc.nat({ max: 0xff });

/** A region that passes the codec's checks: non-empty, no base + size past 2^64. */
export function region(xenMmap: boolean): fc.Arbitrary<MemoryRegionDescription> {
  return fc
    .record({
      size: fc.bigInt({ min: 1n, max: 2n ** 40n }),
      guestAddr: fc.bigInt({ min: 0n, max: 2n ** 63n }),
      userAddr: fc.bigInt({ min: 0n, max: 2n ** 63n }),
      mmapOffset: fc.bigInt({ min: 0n, max: 2n ** 63n }),
      xen: fc.record({ flags: u32, domid: u32 }),
    })
    .map(({ xen, ...r }) => (xenMmap ? { ...r, xen: { flags: xen.flags, domid: xen.domid } } : { ...r }));
}

export function payload(kind: PayloadKind, xenMmap = false): fc.Arbitrary<Payload> {
  switch (kind) {
    case 'empty':
      return fc.constant({ kind });
    case 'u64':
      return u64.map((value) => ({ kind, value }));
    case 'vring-state':
      return fc.record({ index: u32, num: u32 }).map((r) => ({ kind, ...r }));
    case 'vring-address':
      return fc
        .record({ index: u32, flags: u32, descUser: u64, usedUser: u64, availUser: u64, logGuest: u64 })
        .map((r) => ({ kind, ...r }));
    case 'memory-table':
      return fc.array(region(xenMmap), { maxLength: MAX_MEMORY_REGIONS }).map((regions) => ({ kind, regions }));
    case 'memory-region':
      return region(xenMmap).map((r) => ({ kind, region: r }));
    case 'log':
      return fc.record({ size: u64, offset: u64 }).map((r) => ({ kind, ...r }));
    case 'iotlb':
      return fc.record({ iova: u64, size: u64, userAddr: u64, perm: u8, type: u8 }).map((r) => ({ kind, ...r }));
    case 'config':
      return fc
        .record({ offset: fc.nat({ max: 0xffff_0000 }), flags: u32, data: fc.uint8Array({ maxLength: MAX_CONFIG_SIZE }) })
        .map((r) => ({ kind, ...r }));
    case 'vring-area':
      return fc.record({ u64, size: u64, offset: u64 }).map((r) => ({ kind, ...r }));
    case 'inflight':
      return fc.record({ mmapSize: u64, mmapOffset: u64, numQueues: u16, queueSize: u16 }).map((r) => ({ kind, ...r }));
    case 'shared-object':
      return fc.uint8Array({ minLength: 16, maxLength: 16 }).map((uuid) => ({ kind, uuid }));
    case 'device-state':
      return fc.record({ direction: u32, phase: u32 }).map((r) => ({ kind, ...r }));
    case 'opaque':
      return fc.uint8Array({ minLength: 1, maxLength: 600 }).map((bytes) => ({ kind, bytes }));
  }
}

/** Kick, call and err define only bits 0-8 of their u64 (index and no-fd flag). */
export function withoutReservedBits(stream: Stream, request: number, p: Payload): Payload {
  const vringFile: number[] = [FrontendRequest.SET_VRING_KICK, FrontendRequest.SET_VRING_CALL, FrontendRequest.SET_VRING_ERR];
  return stream === 'frontend-requests' && vringFile.includes(request) && p.kind === 'u64' ? { kind: 'u64', value: p.value & 0x1ffn } : p;
}

/** A valid request of `stream` with as many (made-up) descriptors as it needs. */
export function validMessage(stream: Stream): fc.Arbitrary<{ request: number; payload: Payload; fds: number[]; needReply: boolean }> {
  const requests = Object.values(stream.startsWith('frontend') ? FrontendRequest : BackendRequest);
  return fc.constantFrom(...requests).chain((request) => {
    const rules = messageRules(stream, request);
    if (rules === undefined) throw new Error(`no rules for ${request}`);
    return fc
      .constantFrom(...rules.kinds)
      .chain((kind) => payload(kind))
      .map((p) => withoutReservedBits(stream, request, p))
      .chain((p) =>
        fc.record({
          request: fc.constant(request),
          payload: fc.constant(p),
          fds: fc.constant(Array.from({ length: rules.fds(p)[0] }, (_, i) => 1000 + i)),
          needReply: stream.endsWith('replies') ? fc.constant(false) : fc.boolean(),
        }),
      );
  });
}
