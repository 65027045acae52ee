/**
 * virtio-scsi under the adversarial fuzzer (test/fuzz): a controller with one 16-block LUN in
 * memory, attacked on its first request queue and on its control queue. Request-queue probes are
 * READ(10) of one block, checked against the disk's pattern, and INQUIRY, checked for a disk's
 * standard data; control-queue probes are ABORT TASK of a tag not in flight (FUNCTION COMPLETE)
 * and AN_QUERY (no event class supported). On the event queue the host's events are a resize of
 * LUN 0 (PARAM_CHANGE) and hot-plugs and unplugs of LUNs 1 to 4 (TRANSPORT_RESET RESCAN or
 * REMOVED); a probe is a buffer its event must fill.
 */
import { MemoryBackend } from '../../storage/memory-backend.ts';
import type { FuzzProfile, FuzzSubject, Probe, ProbeSeed } from '../device-type.ts';
import { Op } from './cdb.ts';
import { CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE, ScsiDevice } from './device.ts';
import { BLOCK_SIZE, ScsiDisk } from './disk.ts';
import { ScsiTargets } from './target.ts';
import {
  AN_RESPONSE_SIZE,
  ControlType,
  EVENTS_MISSED,
  EVENT_SIZE,
  EventType,
  ResetReason,
  type ScsiEvent,
  RESPONSE_HEADER_SIZE,
  SCSI_CONFIG,
  Response,
  TaskAttr,
  TmfSubtype,
  decodeCommandResponse,
  encodeAn,
  encodeCommandHeader,
  encodeEvent,
  encodeLun,
  encodeTmf,
} from './wire.ts';

const BLOCKS = 16;

function request(cdb: number[], cdbSize: number): Uint8Array {
  const bytes = new Uint8Array(Math.max(cdbSize, cdb.length));
  bytes.set(cdb);
  return encodeCommandHeader({ lun: encodeLun({ target: 0, lun: 0 }), id: 1n, taskAttr: TaskAttr.SIMPLE, prio: 0, crn: 0, cdb: bytes }, cdbSize);
}

/**
 * A request laid out with the sense_size and cdb_size the device uses now: the driver may write
 * them (§5.6.4), and a hostile one does.
 */
function probe(device: ScsiDevice, seed: ProbeSeed): Probe {
  const { senseSize, cdbSize } = SCSI_CONFIG.decode(device.config);
  const RESP = RESPONSE_HEADER_SIZE + senseSize;
  // A cdb_size too small for the CDB cuts it: the device sees another command, and may refuse it.
  const cut = (cdbLength: number, r: { readonly status: number }): boolean => cdbSize < cdbLength && r.status === 2;
  if (seed.choice % 2 === 0) {
    const lba = seed.a % BLOCKS;
    return {
      readable: request([Op.READ_10, 0, 0, 0, 0, lba, 0, 0, 1, 0], cdbSize),
      writable: RESP + BLOCK_SIZE,
      check(written, used) {
        const r = decodeCommandResponse(written.subarray(0, RESP));
        // The LUN's first command after power-on may report the reset instead (29/00, SAM-5 §5.14),
        // whose sense a small sense_size cuts short.
        if (r.status === 2 && r.sense.length < 13 && r.senseLen > r.sense.length) return undefined;
        if (r.status === 2 && r.sense[2] === 6 && r.sense[12] === 0x29) return undefined;
        if (cut(10, r)) return undefined;
        if (r.response !== Response.OK || r.status !== 0) return `READ(10) answered response ${r.response} status ${r.status}`;
        if (used !== RESP + BLOCK_SIZE) return `READ(10) used length ${used}`;
        return written[RESP] === (lba & 0xff) ? undefined : `READ(10) of block ${lba} returned ${written[RESP]}`;
      },
    };
  }
  return {
    readable: request([Op.INQUIRY, 0, 0, 0, 36, 0], cdbSize),
    writable: RESP + 36,
    check(written) {
      const r = decodeCommandResponse(written.subarray(0, RESP));
      if (r.response !== Response.OK) return `INQUIRY answered response ${r.response}`;
      if (cut(6, r)) return undefined;
      return written[RESP] === 0 ? undefined : `INQUIRY peripheral byte ${written[RESP]}`;
    },
  };
}

function controlProbe(seed: ProbeSeed): Probe {
  const lun = encodeLun({ target: 0, lun: 0 });
  if (seed.choice % 2 === 0) {
    return {
      readable: encodeTmf({ subtype: TmfSubtype.ABORT_TASK, lun, id: BigInt(seed.a) + 1000n }),
      writable: 1,
      check: (written, used) => (used === 1 && written[0] === Response.OK ? undefined : `ABORT TASK answered ${written[0]} (used ${used})`),
    };
  }
  return {
    readable: encodeAn({ type: ControlType.AN_QUERY, lun, eventRequested: seed.b }),
    writable: AN_RESPONSE_SIZE,
    check: (written, used) =>
      used === AN_RESPONSE_SIZE && written.subarray(0, 4).every((b) => b === 0) && written[4] === Response.OK ? undefined : `AN_QUERY answered ${[...written].join(',')} (used ${used})`,
  };
}

/** A controller whose one LUN's block n starts with the byte n, so a probe knows what it must read back. */
function controller(maxQueueSize: number): ScsiDevice {
  const backend = new MemoryBackend(BLOCKS * BLOCK_SIZE);
  for (let b = 0; b < BLOCKS; b++) backend.bytes[b * BLOCK_SIZE] = b;
  const targets = new ScsiTargets();
  targets.add({ target: 0, lun: 0 }, new ScsiDisk({ backend, serial: 'fuzz' }));
  return new ScsiDevice({ targets, queueSize: maxQueueSize });
}

function disk(): ScsiDisk {
  return new ScsiDisk({ backend: new MemoryBackend(BLOCKS * BLOCK_SIZE), serial: 'fuzz' });
}

/**
 * The host's side of the event queue: each event is one the device must announce, and the record
 * it must write (§5.6.6.3.1, §5.6.6.3.3; both features are offered, and the fuzzer's driver takes them).
 */
function eventSubject(maxQueueSize: number): FuzzSubject {
  const device = controller(maxQueueSize);
  const happen = (seed: ProbeSeed): ScsiEvent => {
    if (seed.choice % 3 === 0) {
      const address = { target: 0, lun: 0 };
      device.resize(address, new MemoryBackend(BLOCKS * BLOCK_SIZE));
      // CAPACITY DATA HAS CHANGED: ASC 0x2a, ASCQ 0x09, as reason's ASC and ASCQ bytes.
      return { event: EventType.PARAM_CHANGE, address, reason: (0x09 << 8) | 0x2a };
    }
    const address = { target: 0, lun: 1 + (seed.b % 4) };
    if (device.targets.get(address) === undefined) {
      device.attach(address, disk());
      return { event: EventType.TRANSPORT_RESET, address, reason: ResetReason.RESCAN };
    }
    void device.detach(address);
    return { event: EventType.TRANSPORT_RESET, address, reason: ResetReason.REMOVED };
  };
  return {
    device,
    produce: (seed) => void happen(seed),
    probe: (seed) => {
      let expected: ScsiEvent | undefined;
      return {
        readable: new Uint8Array(0),
        writable: EVENT_SIZE,
        deliver: () => {
          expected = happen(seed);
        },
        check: (written, used) => {
          if (expected === undefined) return 'no event was delivered';
          const want = encodeEvent(expected);
          const got = written.slice(0, EVENT_SIZE);
          // An event the full backlog dropped is announced on the next one delivered (§5.6.6.3.1).
          const missed = (new DataView(got.buffer).getUint32(0, true) & EVENTS_MISSED) !== 0;
          if (missed && (device.counters.snapshot().device.eventsDropped ?? 0) === 0) return 'EVENTS_MISSED is set, and no event was dropped';
          if (missed) got[3] &= 0x7f;
          return used === EVENT_SIZE && got.every((v, i) => v === want[i]) ? undefined : `event ${[...written].join(',')} with used length ${used}, expected ${[...want].join(',')}`;
        },
      };
    },
    violation: () => undefined,
  };
}

export const SCSI_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'scsi requestq',
    queue: FIRST_REQUEST_QUEUE,
    minQueueSize: 2,
    create: ({ maxQueueSize }) => {
      const device = controller(maxQueueSize);
      return { device, probe: (seed) => probe(device, seed), violation: () => undefined };
    },
  },
  {
    name: 'scsi controlq',
    queue: CONTROL_QUEUE,
    minQueueSize: 2,
    create: ({ maxQueueSize }) => ({ device: controller(maxQueueSize), probe: controlProbe, violation: () => undefined }),
  },
  {
    name: 'scsi eventq',
    queue: EVENT_QUEUE,
    minQueueSize: 1,
    create: ({ maxQueueSize }) => eventSubject(maxQueueSize),
  },
];
