/**
 * Task management on the control queue (§5.6.6.2; SAM-5 §7): the commands in flight (the task
 * set) and the functions that act on them. Backend I/O cannot be cancelled, so aborting a command
 * marks it: when its I/O ends it is answered VIRTIO_SCSI_S_ABORTED (or S_RESET for a reset)
 * instead of its status, and the task management function answers only once every command it
 * aborted has been returned — §5.6.6.2: the TMF response comes after the aborted requests'.
 *
 * Asynchronous notification (AN_QUERY, AN_SUBSCRIBE) is answered with no event class supported.
 */
import type { Request } from '../../virtio/serve.ts';
import type { ScsiTargets } from './target.ts';
import {
  AN_REQUEST_SIZE,
  AN_RESPONSE_SIZE,
  ControlType,
  type LunAddress,
  Response,
  TMF_REQUEST_SIZE,
  TmfSubtype,
  controlType,
  decodeAn,
  decodeLun,
  decodeTmf,
  encodeAnResponse,
} from './wire.ts';

/** A command in flight. */
export interface Task {
  readonly id: bigint;
  readonly address: LunAddress;
  /** Set by a TMF: the response the command gets instead of its own. */
  abortedWith: number | undefined;
  readonly done: Promise<void>;
}

/** The commands in flight on every request queue. */
export class TaskSet {
  private readonly tasks = new Set<Task>();

  get size(): number {
    return this.tasks.size;
  }

  /** Track `run` (the command's execution) as a task until it settles. */
  track(id: bigint, address: LunAddress, run: (task: Task) => Promise<void>): Task {
    let finish!: () => void;
    const task: Task = { id, address, abortedWith: undefined, done: new Promise<void>((resolve) => (finish = resolve)) };
    this.tasks.add(task);
    void run(task).finally(() => {
      this.tasks.delete(task);
      finish();
    });
    return task;
  }

  /** Tasks matching `pick`. */
  select(pick: (t: Task) => boolean): Task[] {
    return [...this.tasks].filter(pick);
  }

  /** Mark `tasks` aborted with `response` and wait for each to be returned. */
  async abort(tasks: readonly Task[], response: number): Promise<void> {
    for (const t of tasks) t.abortedWith ??= response;
    await Promise.all(tasks.map((t) => t.done));
  }
}

const sameLun = (a: LunAddress) => (t: Task) => t.address.target === a.target && t.address.lun === a.lun;

/** What task management needs of the device. */
export interface TmfContext {
  readonly targets: ScsiTargets;
  readonly tasks: TaskSet;
}

/** Perform one task management function; returns its response code. */
export async function taskManagement(ctx: TmfContext, bytes: Uint8Array): Promise<number> {
  const tmf = decodeTmf(bytes);
  const address = decodeLun(tmf.lun);
  if (address === undefined || !ctx.targets.hasTarget(address.target)) return Response.BAD_TARGET;
  const disk = ctx.targets.get(address);
  const { tasks } = ctx;
  switch (tmf.subtype) {
    case TmfSubtype.ABORT_TASK: {
      // A task that is not there (already completed) is FUNCTION COMPLETE (SAM-5 §7.2).
      await tasks.abort(tasks.select((t) => sameLun(address)(t) && t.id === tmf.id), Response.ABORTED);
      return Response.OK;
    }
    case TmfSubtype.ABORT_TASK_SET:
    case TmfSubtype.CLEAR_TASK_SET:
      if (disk === undefined) return Response.INCORRECT_LUN;
      await tasks.abort(tasks.select(sameLun(address)), Response.ABORTED);
      return Response.OK;
    case TmfSubtype.LOGICAL_UNIT_RESET:
      if (disk === undefined) return Response.INCORRECT_LUN;
      await tasks.abort(tasks.select(sameLun(address)), Response.RESET);
      disk.reset();
      return Response.OK;
    case TmfSubtype.I_T_NEXUS_RESET: {
      // The nexus of the one initiator with this target: every LUN of the target (SAM-5 §7.6).
      await tasks.abort(tasks.select((t) => t.address.target === address.target), Response.RESET);
      for (const e of ctx.targets.entries()) if (e.address.target === address.target) e.disk.reset();
      return Response.OK;
    }
    case TmfSubtype.QUERY_TASK:
      return tasks.select((t) => sameLun(address)(t) && t.id === tmf.id).length > 0 ? Response.FUNCTION_SUCCEEDED : Response.OK;
    case TmfSubtype.QUERY_TASK_SET:
      if (disk === undefined) return Response.INCORRECT_LUN;
      return tasks.select(sameLun(address)).length > 0 ? Response.FUNCTION_SUCCEEDED : Response.OK;
    default:
      // CLEAR ACA (no ACA: NACA is refused in every CDB) and unknown subtypes.
      return Response.FUNCTION_REJECTED;
  }
}

/**
 * Serve one control request. A request too short for its type, or of an unknown type, is
 * returned without an answer (used length 0) and counted: there is no response field whose place
 * the device could trust. Returns false for those.
 */
export async function serveControl(ctx: TmfContext, req: Request): Promise<boolean> {
  const { reader, writer, chain } = req;
  const head = reader.readExact(4);
  if (head === undefined) return false;
  const type = controlType(head);
  if (type === ControlType.TMF) {
    const rest = reader.readExact(TMF_REQUEST_SIZE - 4);
    if (rest === undefined || chain.writableLength < 1) return false;
    const response = await taskManagement(ctx, Uint8Array.from([...head, ...rest]));
    writer.write(Uint8Array.of(response));
    return true;
  }
  if (type === ControlType.AN_QUERY || type === ControlType.AN_SUBSCRIBE) {
    const rest = reader.readExact(AN_REQUEST_SIZE - 4);
    if (rest === undefined || chain.writableLength < AN_RESPONSE_SIZE) return false;
    const an = decodeAn(Uint8Array.from([...head, ...rest]));
    const address = decodeLun(an.lun);
    const known = address !== undefined && ctx.targets.hasTarget(address.target);
    // No notification class is supported: event_actual 0 (§5.6.6.2.1).
    writer.write(encodeAnResponse(0, known ? Response.OK : Response.BAD_TARGET));
    return true;
  }
  return false;
}
