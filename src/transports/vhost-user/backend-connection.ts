/**
 * One front-end connection: reads vhost-user messages from the socket, one at a time and in
 * order, hands each to the back-end state machine and writes the reply.
 *
 * Reply policy ("Communication", "REPLY_ACK"): requests with a reply body always get one;
 * other requests get an acknowledgement when the front-end set NEED_REPLY and REPLY_ACK was
 * negotiated. A refused request is logged in one line and answered with a non-zero
 * acknowledgement when one was asked for. When none was asked for, or the request needs a
 * body the back-end cannot give, the front-end would go on believing something false, so the
 * connection is closed instead. The process keeps serving: the next front-end may connect.
 */
import type { Logger } from 'pino';
import { type Watcher, watch } from '../../native/readiness.ts';
import type { UnixSocket } from '../../native/unix-socket.ts';
import { drainSocket } from './socket-drain.ts';
import type { VirtioDevice } from '../../virtio/device.ts';
import { type BackendPorts, FrontEndError, VhostUserBackend, type VhostUserServing } from './backend.ts';
import { createBackendPorts } from './backend-ports.ts';
import { FrontendRequest, HeaderFlag, ProtocolFeature, VRING_INDEX_MASK, VRING_NOFD_MASK, frontendRequestName } from './constants.ts';
import {
  type Encoded,
  type FrontendRequestMessage,
  type Payload,
  VhostUserProtocolError,
  encodeAck,
  encodeReply,
  repliesWithAck,
} from './messages.ts';
import { MessageReader } from './reader.ts';

const F = FrontendRequest;

/** Requests only legal once a protocol feature was negotiated ("Front-end message types"). */
const REQUIRED_PROTOCOL_FEATURE: ReadonlyMap<number, number> = new Map([
  [F.GET_CONFIG, ProtocolFeature.CONFIG],
  [F.SET_CONFIG, ProtocolFeature.CONFIG],
  [F.GET_MAX_MEM_SLOTS, ProtocolFeature.CONFIGURE_MEM_SLOTS],
  [F.ADD_MEM_REG, ProtocolFeature.CONFIGURE_MEM_SLOTS],
  [F.REM_MEM_REG, ProtocolFeature.CONFIGURE_MEM_SLOTS],
  [F.SET_STATUS, ProtocolFeature.STATUS],
  [F.GET_STATUS, ProtocolFeature.STATUS],
  [F.RESET_DEVICE, ProtocolFeature.RESET_DEVICE],
  [F.SET_BACKEND_REQ_FD, ProtocolFeature.BACKEND_REQ],
  [F.GET_INFLIGHT_FD, ProtocolFeature.INFLIGHT_SHMFD],
  [F.SET_INFLIGHT_FD, ProtocolFeature.INFLIGHT_SHMFD],
]);

/**
 * What handling one request produced: a reply body, one carrying descriptors (which the
 * connection closes once sent), or nothing beyond a possible ack.
 */
type Outcome = Payload | { readonly body: Payload; readonly fds: readonly number[] } | undefined;

/**
 * Whether a refusal of `request` can be told as a non-zero acknowledgement. The memory table
 * requests reply with a region list only in postcopy mode, which this back-end never enters;
 * otherwise they are acknowledged like any request without a reply body.
 */
function answersWithAck(request: number): boolean {
  return repliesWithAck('frontend-requests', request) || request === F.SET_MEM_TABLE || request === F.ADD_MEM_REG || request === F.REM_MEM_REG;
}

const u64 = (value: bigint | number): Payload => ({ kind: 'u64', value: BigInt(value) });

/** Ring index and no-fd flag of SET_VRING_KICK/CALL/ERR's payload. */
function vringFd(value: bigint, fds: readonly number[]): { index: number; fd: number | undefined } {
  return { index: Number(value & VRING_INDEX_MASK), fd: (value & VRING_NOFD_MASK) !== 0n ? undefined : fds[0] };
}

export class BackendConnection {
  readonly backend: VhostUserBackend;
  private readonly ports: BackendPorts;
  private readonly reader = new MessageReader('frontend-requests');
  private readonly watcher: Watcher;
  /** A request is being handled; messages wait in the reader (and the socket) meanwhile. */
  private busy = false;
  /** The front-end closed its end, or this side decided to end the session. */
  private ending = false;
  private finished = false;
  private resolveEnded!: () => void;
  /** Resolves once the session is over and everything it held is released. */
  readonly ended: Promise<void>;

  constructor(
    private readonly socket: UnixSocket,
    device: VirtioDevice,
    private readonly log: Logger,
    serving: VhostUserServing = {},
  ) {
    this.ports = createBackendPorts(log);
    this.backend = new VhostUserBackend(device, this.ports, log, serving);
    // A front-end connected: it starts the device once its guest's driver sets DRIVER_OK.
    device.prepare?.();
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.watcher = watch(socket.fd, {
      readable: () => this.readable(),
      error: (err) => this.end(`socket error: ${err.message}`),
    });
  }

  /** End the session from this side (shutdown); resolves when it is over. */
  close(): Promise<void> {
    this.end('back-end shutting down');
    return this.ended;
  }

  /** Move what the socket holds into the reader, then handle the messages it completes. */
  private readable(): void {
    if (this.busy || this.ending) {
      // Stop polling until the current request is done: a front-end that floods the socket
      // fills its own send buffer, not this process's memory.
      this.watcher.update({});
      return;
    }
    const drained = drainSocket(this.socket, this.reader);
    if (typeof drained === 'object') {
      this.end(drained.failed);
      return;
    }
    if (drained === 'hung up') this.ending = true;
    void this.pump();
  }

  /** Handle every complete message in order, one at a time, then poll the socket again. */
  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      // After EOF or close() nobody reads replies: what is still buffered is dropped.
      while (!this.ending) {
        const next = this.reader.next();
        if (next.type === 'need-more') break;
        const goOn = next.type === 'error' ? this.refusedMessage(next.error) : await this.dispatch(next.message);
        if (!goOn) {
          this.ending = true;
          break;
        }
      }
    } catch (err) {
      // Only a failing socket or a back-end bug gets here: end this session, keep the process.
      this.log.error({ err: (err as Error).message }, 'front-end session failed');
      this.ending = true;
    } finally {
      this.busy = false;
    }
    if (this.ending) await this.finish();
    else this.watcher.update({ readable: () => this.readable(), error: (err) => this.end(`socket error: ${err.message}`) });
  }

  private end(reason: string): void {
    if (this.ending) return;
    this.log.info({ reason }, 'ending the front-end session');
    this.ending = true;
    if (!this.busy) void this.finish();
  }

  /** Release everything: rings drained, device reset, mappings and descriptors closed. */
  private async finish(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    this.watcher.close();
    for (const fd of this.reader.takePendingFds()) this.closeQuietly(fd);
    await this.backend.close();
    this.socket.close();
    this.resolveEnded();
  }

  /** A message the codec refused. Returns whether the connection goes on. */
  private refusedMessage(err: VhostUserProtocolError): boolean {
    for (const fd of err.fds) this.closeQuietly(fd);
    this.log.warn({ rule: err.rule }, `front-end message refused: ${err.message}`);
    if (err.fatal || err.header === undefined) return false;
    return this.sendFailureAck(err.header.request, (err.header.flags & HeaderFlag.NEED_REPLY) !== 0);
  }

  /** Handle one request and reply as the policy above says. Returns whether the connection goes on. */
  private async dispatch(m: FrontendRequestMessage): Promise<boolean> {
    if (this.log.isLevelEnabled('debug')) {
      this.log.debug({ request: frontendRequestName(m.request), payload: m.payload, fds: m.fds.length }, 'front-end request');
    }
    let outcome: Outcome;
    try {
      outcome = await this.handle(m);
    } catch (err) {
      if (!(err instanceof FrontEndError)) throw err;
      this.log.warn({ request: frontendRequestName(m.request) }, `front-end request refused: ${err.message}`);
      return this.sendFailureAck(m.request, m.needReply);
    }
    if (outcome !== undefined && 'body' in outcome) {
      try {
        return this.send(encodeReply('frontend-replies', m.request, outcome.body, outcome.fds));
      } finally {
        for (const fd of outcome.fds) this.closeQuietly(fd);
      }
    }
    if (outcome !== undefined) return this.send(encodeReply('frontend-replies', m.request, outcome));
    if (m.needReply && this.backend.hasProtocolFeature(ProtocolFeature.REPLY_ACK)) {
      return this.send(encodeAck('frontend-replies', m.request));
    }
    return true;
  }

  /** Answer a refused request with a non-zero ack when one was asked for; otherwise end the session. */
  private sendFailureAck(request: number, needReply: boolean): boolean {
    if (needReply && this.backend.hasProtocolFeature(ProtocolFeature.REPLY_ACK) && answersWithAck(request)) {
      return this.send(encodeAck('frontend-replies', request, 1n));
    }
    if (request === F.GET_CONFIG) {
      // "back-end uses zero length of payload to indicate an error"
      return this.send(encodeReply('frontend-replies', request, { kind: 'empty' }));
    }
    this.log.warn({ request: frontendRequestName(request) }, 'closing the connection: the front-end cannot be told of the refusal');
    return false;
  }

  private send(reply: Encoded): boolean {
    // Replies are a few dozen bytes on a socket the front-end is blocked reading: a short write
    // means the front-end is not reading at all, and the session cannot continue.
    const sent = this.socket.send(reply.bytes, reply.fds);
    if (sent !== reply.bytes.length) {
      this.log.warn({ sent, length: reply.bytes.length }, 'front-end does not read its replies; closing the connection');
      return false;
    }
    return true;
  }

  private closeQuietly(fd: number): void {
    this.ports.close(fd);
  }

  /** Apply one request to the back-end; returns the reply body for requests that have one. */
  private async handle(m: FrontendRequestMessage): Promise<Outcome> {
    const b = this.backend;
    const required = REQUIRED_PROTOCOL_FEATURE.get(m.request);
    if (required !== undefined && !b.hasProtocolFeature(required)) {
      for (const fd of m.fds) this.closeQuietly(fd);
      throw new FrontEndError(`${frontendRequestName(m.request)} without its protocol feature (bit ${required})`);
    }
    switch (m.request) {
      case F.GET_FEATURES:
        return u64(b.offeredFeatures);
      case F.SET_FEATURES:
        b.setFeatures(m.payload.value);
        return undefined;
      case F.GET_PROTOCOL_FEATURES:
        return u64(b.offeredProtocolFeatures);
      case F.SET_PROTOCOL_FEATURES:
        b.setProtocolFeatures(m.payload.value);
        return undefined;
      case F.SET_OWNER:
        return undefined;
      case F.RESET_OWNER:
        await b.resetOwner();
        return undefined;
      case F.RESET_DEVICE:
        await b.resetDevice();
        return undefined;
      case F.SET_MEM_TABLE:
        // The mappings outlive the descriptors: close them whether or not the table was taken.
        try {
          await b.setMemTable(m.payload.regions, m.fds);
        } finally {
          for (const fd of m.fds) this.closeQuietly(fd);
        }
        return undefined;
      case F.GET_MAX_MEM_SLOTS:
        return u64(b.maxMemSlots);
      case F.ADD_MEM_REG:
        try {
          await b.addMemReg(m.payload.region, m.fds[0]);
        } finally {
          this.closeQuietly(m.fds[0]);
        }
        return undefined;
      case F.REM_MEM_REG:
        // "If a file descriptor is passed, the back-end MUST close it without using it otherwise."
        for (const fd of m.fds) this.closeQuietly(fd);
        await b.remMemReg(m.payload.region);
        return undefined;
      case F.GET_QUEUE_NUM:
        return u64(b.queueCount);
      case F.SET_VRING_NUM:
        b.setVringNum(m.payload.index, m.payload.num);
        return undefined;
      case F.SET_VRING_ADDR:
        if (m.payload.flags !== 0) {
          throw new FrontEndError(`ring ${m.payload.index}: address flags 0x${m.payload.flags.toString(16)} (dirty logging is not offered)`);
        }
        b.setVringAddr(m.payload.index, { desc: m.payload.descUser, driver: m.payload.availUser, device: m.payload.usedUser });
        return undefined;
      case F.SET_VRING_BASE:
        b.setVringBase(m.payload.index, m.payload.num);
        return undefined;
      case F.GET_VRING_BASE:
        return { kind: 'vring-state', index: m.payload.index, num: await b.getVringBase(m.payload.index) };
      case F.SET_VRING_KICK: {
        const { index, fd } = vringFd(m.payload.value, m.fds);
        b.setVringKick(index, fd);
        return undefined;
      }
      case F.SET_VRING_CALL: {
        const { index, fd } = vringFd(m.payload.value, m.fds);
        b.setVringCall(index, fd);
        return undefined;
      }
      case F.SET_VRING_ERR: {
        const { index, fd } = vringFd(m.payload.value, m.fds);
        b.setVringErr(index, fd);
        return undefined;
      }
      case F.SET_VRING_ENABLE:
        b.setVringEnable(m.payload.index, m.payload.num);
        return undefined;
      case F.GET_CONFIG:
        return { kind: 'config', offset: m.payload.offset, flags: m.payload.flags, data: b.getConfig(m.payload.offset, m.payload.data.length) };
      case F.SET_CONFIG:
        b.setConfig(m.payload.offset, m.payload.data);
        return undefined;
      case F.SET_STATUS:
        if (m.payload.value > 0xffn) throw new FrontEndError(`device status 0x${m.payload.value.toString(16)} is not an 8-bit value`);
        await b.setStatus(Number(m.payload.value));
        return undefined;
      case F.GET_STATUS:
        return u64(b.getStatus());
      case F.GET_INFLIGHT_FD: {
        const r = b.getInflightFd(m.payload.numQueues, m.payload.queueSize);
        const body: Payload = { kind: 'inflight', mmapSize: r.mmapSize, mmapOffset: 0n, numQueues: r.numQueues, queueSize: r.queueSize };
        return { body, fds: [r.fd] };
      }
      case F.SET_INFLIGHT_FD:
        try {
          b.setInflightFd(m.payload.mmapSize, m.payload.mmapOffset, m.payload.numQueues, m.payload.queueSize, m.fds[0]);
        } finally {
          this.closeQuietly(m.fds[0]);
        }
        return undefined;
      case F.SET_BACKEND_REQ_FD:
        b.setBackendReqFd(m.fds[0]);
        return undefined;
      case F.GPU_SET_SOCKET:
        b.setGpuSocket(m.fds[0]);
        return undefined;
      default:
        // Every other request belongs to a feature this back-end does not offer.
        for (const fd of m.fds) this.closeQuietly(fd);
        throw new FrontEndError(`${frontendRequestName(m.request)} is not supported by this back-end`);
    }
  }
}
