/**
 * virtio-gpu under the adversarial fuzzer (test/fuzz). Probes are well-formed commands whose
 * answer is known whatever earlier (garbled) requests did: display info, resources created with a
 * zero side, backing outside guest RAM, unknown commands, fenced requests (the fence must come
 * back), resources created and dropped under a small memory bound. The host memory held for
 * resources must never pass the bound.
 */
import type { FuzzProfile, FuzzSubject, Probe, ProbeSeed } from '../device-type.ts';
import { CURSORQ, CONTROLQ, GpuDevice } from './device.ts';
import { CTRL_HDR_SIZE, DISPLAY_INFO_SIZE, GPU_TYPE_NAMES, GpuCmd, GpuFlag, GpuFormat, GpuResp, decodeHdr, encodeHdr } from './wire.ts';

/** Small, so that probes meet the bound often and a case stays cheap. */
const MAX_RESOURCE_MEMORY = 256 << 10;

function request(type: number, seed: ProbeSeed, ...fields: number[]): { bytes: Uint8Array; fenceId: bigint | undefined } {
  const fenced = (seed.fill & 1) === 1;
  const fenceId = fenced ? BigInt(seed.a >>> 0) * 65536n + BigInt(seed.fill) : undefined;
  const bytes = new Uint8Array(CTRL_HDR_SIZE + fields.length * 4);
  const v = new DataView(bytes.buffer);
  encodeHdr(v, 0, { type, flags: fenced ? GpuFlag.FENCE : 0, fenceId: fenceId ?? 0n, ctxId: 0, ringIdx: 0 });
  fields.forEach((f, i) => v.setUint32(CTRL_HDR_SIZE + i * 4, f >>> 0, true));
  return { bytes, fenceId };
}

/** The answer's check: its type is one of `expected`, its length `length`, and a fence came back. */
function expect(fenceId: bigint | undefined, length: number, ...expected: number[]): (written: Uint8Array, used: number) => string | undefined {
  return (written, used) => {
    if (used !== length) return `used length ${used}, expected ${length}`;
    const hdr = decodeHdr(new DataView(written.buffer, written.byteOffset, written.byteLength));
    if (!expected.includes(hdr.type)) return `answer ${GPU_TYPE_NAMES[hdr.type] ?? hdr.type}, expected ${expected.map((t) => GPU_TYPE_NAMES[t]).join(' or ')}`;
    if (fenceId !== undefined && ((hdr.flags & GpuFlag.FENCE) === 0 || hdr.fenceId !== fenceId)) return `fence ${fenceId} came back as ${hdr.fenceId}`;
    return undefined;
  };
}

function controlProbe(seed: ProbeSeed): Probe {
  const id = 1 + ((seed.a >>> 0) % 64);
  const side = 1 + ((seed.b >>> 0) % 256);
  switch (seed.choice % 6) {
    case 0: {
      const r = request(GpuCmd.GET_DISPLAY_INFO, seed);
      return { readable: r.bytes, writable: DISPLAY_INFO_SIZE, check: expect(r.fenceId, DISPLAY_INFO_SIZE, GpuResp.OK_DISPLAY_INFO) };
    }
    case 1: {
      const r = request(GpuCmd.RESOURCE_CREATE_2D, seed, 0x1000 + id, GpuFormat.B8G8R8X8_UNORM, 0, side);
      return { readable: r.bytes, writable: CTRL_HDR_SIZE, check: expect(r.fenceId, CTRL_HDR_SIZE, GpuResp.ERR_INVALID_PARAMETER, GpuResp.ERR_INVALID_RESOURCE_ID) };
    }
    case 2: {
      // One entry at 2^40 and above: outside any guest RAM the fuzzer gives.
      const r = request(GpuCmd.RESOURCE_ATTACH_BACKING, seed, id, 1, seed.b, 0x100 + (seed.fill & 0xff), 4096, 0);
      return { readable: r.bytes, writable: CTRL_HDR_SIZE, check: expect(r.fenceId, CTRL_HDR_SIZE, GpuResp.ERR_INVALID_PARAMETER, GpuResp.ERR_INVALID_RESOURCE_ID, GpuResp.ERR_UNSPEC) };
    }
    case 3: {
      const r = request(0x0400 + (seed.fill & 0xff), seed, seed.a, seed.b);
      return { readable: r.bytes, writable: CTRL_HDR_SIZE, check: expect(r.fenceId, CTRL_HDR_SIZE, GpuResp.ERR_UNSPEC) };
    }
    case 4: {
      const r = request(GpuCmd.RESOURCE_CREATE_2D, seed, id, GpuFormat.B8G8R8A8_UNORM, side, 1 + (seed.fill % 256));
      return { readable: r.bytes, writable: CTRL_HDR_SIZE, check: expect(r.fenceId, CTRL_HDR_SIZE, GpuResp.OK_NODATA, GpuResp.ERR_INVALID_RESOURCE_ID, GpuResp.ERR_OUT_OF_MEMORY) };
    }
    default: {
      const r = request(GpuCmd.RESOURCE_UNREF, seed, id, 0);
      return { readable: r.bytes, writable: CTRL_HDR_SIZE, check: expect(r.fenceId, CTRL_HDR_SIZE, GpuResp.OK_NODATA, GpuResp.ERR_INVALID_RESOURCE_ID) };
    }
  }
}

function subject(maxQueueSize: number, probe: (seed: ProbeSeed) => Probe): FuzzSubject {
  const device = new GpuDevice({ maxQueueSize, maxResourceMemory: MAX_RESOURCE_MEMORY, scanouts: [{ width: 64, height: 48 }, { width: 32, height: 32 }] });
  return {
    device,
    probe,
    violation: (): string | undefined => {
      const held = device.counters.snapshot().device.resourceBytes ?? 0;
      return held > MAX_RESOURCE_MEMORY ? `resources hold ${held} bytes, past the ${MAX_RESOURCE_MEMORY}-byte bound` : undefined;
    },
  };
}

export const GPU_FUZZ: readonly FuzzProfile[] = [
  { name: 'gpu controlq', queue: CONTROLQ, minQueueSize: 2, create: ({ maxQueueSize }) => subject(maxQueueSize, controlProbe) },
  {
    name: 'gpu cursorq',
    queue: CURSORQ,
    minQueueSize: 2,
    create: ({ maxQueueSize }) =>
      subject(maxQueueSize, (seed) => {
        const r = request(GpuCmd.MOVE_CURSOR, seed, seed.fill % 2, seed.a, seed.b, 0, 0, 0, 0, 0);
        return { readable: r.bytes, writable: CTRL_HDR_SIZE, check: expect(r.fenceId, CTRL_HDR_SIZE, GpuResp.OK_NODATA, GpuResp.ERR_INVALID_SCANOUT_ID) };
      }),
  },
];
