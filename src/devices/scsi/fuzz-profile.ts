/**
 * virtio-scsi under the adversarial fuzzer (test/fuzz): a controller with one 16-block LUN in
 * memory, attacked on its first request queue and on its control queue. Request-queue probes are
 * READ(10) of one block, checked against the disk's pattern, and INQUIRY, checked for a disk's
 * standard data; control-queue probes are ABORT TASK of a tag not in flight (FUNCTION COMPLETE)
 * and AN_QUERY (no event class supported).
 */
import { MemoryBackend } from '../../storage/memory-backend.ts';
import type { FuzzProfile, Probe, ProbeSeed } from '../device-type.ts';
import { Op } from './cdb.ts';
import { CONTROL_QUEUE, FIRST_REQUEST_QUEUE, ScsiDevice } from './device.ts';
import { BLOCK_SIZE, ScsiDisk } from './disk.ts';
import { ScsiTargets } from './target.ts';
import {
  AN_RESPONSE_SIZE,
  ControlType,
  RESPONSE_HEADER_SIZE,
  SCSI_CONFIG,
  Response,
  TaskAttr,
  TmfSubtype,
  decodeCommandResponse,
  encodeAn,
  encodeCommandHeader,
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
];
