/**
 * vhost-user messages: for every request type of both directions, which payload layouts its
 * request and its reply carry and how many descriptors come with each; typed messages; one
 * decoder that checks a framed message against that table; and the encoders for requests,
 * replies and acknowledgements. Streaming (framing, descriptor attribution) is reader.ts.
 *
 * Decoding never throws: a broken rule becomes a VhostUserProtocolError value naming it.
 * Encoding throws RangeError, because what it refuses is this program's own mistake.
 */
import {
  BackendRequest,
  FrontendRequest,
  HEADER_SIZE,
  HeaderFlag,
  MAX_FDS,
  VRING_INDEX_MASK,
  VRING_NOFD_MASK,
  backendRequestName,
  frontendRequestName,
} from './constants.ts';
import {
  decodePayload,
  encodePayload,
  isViolation,
  payloadLength,
  type LayoutOptions,
  type Payload,
  type PayloadKind,
  type PayloadOf,
  type PayloadViolation,
} from './payloads.ts';

/** [min, max] descriptors a message may carry, given its decoded payload. */
type FdRule = (p: Payload) => readonly [number, number];

const NONE: FdRule = () => [0, 0];
const ONE: FdRule = () => [1, 1];
const OPTIONAL: FdRule = () => [0, 1];
/** SET_VRING_KICK/CALL/ERR, HOST_NOTIFIER: one descriptor unless the no-fd bit is set. */
const unlessNoFd: FdRule = (p) => {
  const word = p.kind === 'u64' ? p.value : p.kind === 'vring-area' ? p.u64 : 0n;
  return (word & VRING_NOFD_MASK) !== 0n ? [0, 0] : [1, 1];
};
/** SET_MEM_TABLE: one descriptor per region, in order. */
const perRegion: FdRule = (p) => {
  const n = p.kind === 'memory-table' ? p.regions.length : 0;
  return [n, n];
};
/** SET_LOG_BASE: the shared-memory log (LOG_SHMFD) comes with its descriptor. */
const logFd: FdRule = (p) => (p.kind === 'log' ? [1, 1] : [0, 0]);
/** SET_DEVICE_STATE_FD reply: bit 8 set means no descriptor. */
const stateFd: FdRule = (p) => (p.kind === 'u64' && (p.value & VRING_NOFD_MASK) === 0n ? [1, 1] : [0, 0]);
/** SHARED_OBJECT_LOOKUP reply: a descriptor exactly on success (0). */
const onSuccess: FdRule = (p) => (p.kind === 'u64' && p.value === 0n ? [1, 1] : [0, 0]);

interface Spec<Q extends readonly PayloadKind[], R extends readonly PayloadKind[]> {
  readonly request: Q;
  readonly requestFds: FdRule;
  /** Layouts of the reply; requests without an explicit reply body are acknowledged with u64. */
  readonly reply: R;
  readonly replyFds: FdRule;
}

function spec<const Q extends readonly PayloadKind[], const R extends readonly PayloadKind[] = readonly ['u64']>(
  request: Q,
  options: { requestFds?: FdRule; reply?: R; replyFds?: FdRule } = {},
): Spec<Q, R> {
  return {
    request,
    requestFds: options.requestFds ?? NONE,
    reply: options.reply ?? (['u64'] as unknown as R),
    replyFds: options.replyFds ?? NONE,
  };
}

const F = FrontendRequest;
/** "Front-end message types". Alternatives in a list are told apart by payload size. */
const FRONTEND_SPECS = {
  [F.GET_FEATURES]: spec(['empty']),
  [F.SET_FEATURES]: spec(['u64']),
  [F.SET_OWNER]: spec(['empty']),
  [F.RESET_OWNER]: spec(['empty']),
  [F.SET_MEM_TABLE]: spec(['memory-table'], { requestFds: perRegion, reply: ['u64', 'memory-table'] }),
  [F.SET_LOG_BASE]: spec(['u64', 'log'], { requestFds: logFd }),
  [F.SET_LOG_FD]: spec(['empty'], { requestFds: ONE }),
  [F.SET_VRING_NUM]: spec(['vring-state']),
  [F.SET_VRING_ADDR]: spec(['vring-address']),
  [F.SET_VRING_BASE]: spec(['vring-state']),
  [F.GET_VRING_BASE]: spec(['vring-state'], { reply: ['vring-state'] }),
  [F.SET_VRING_KICK]: spec(['u64'], { requestFds: unlessNoFd }),
  [F.SET_VRING_CALL]: spec(['u64'], { requestFds: unlessNoFd }),
  [F.SET_VRING_ERR]: spec(['u64'], { requestFds: unlessNoFd }),
  [F.GET_PROTOCOL_FEATURES]: spec(['empty']),
  [F.SET_PROTOCOL_FEATURES]: spec(['u64']),
  [F.GET_QUEUE_NUM]: spec(['empty']),
  [F.SET_VRING_ENABLE]: spec(['vring-state']),
  [F.SEND_RARP]: spec(['u64']),
  [F.NET_SET_MTU]: spec(['u64']),
  [F.SET_BACKEND_REQ_FD]: spec(['empty'], { requestFds: ONE }),
  [F.IOTLB_MSG]: spec(['iotlb']),
  [F.SET_VRING_ENDIAN]: spec(['vring-state']),
  // A zero-length GET_CONFIG reply is the back-end's error answer.
  [F.GET_CONFIG]: spec(['config'], { reply: ['config', 'empty'] }),
  [F.SET_CONFIG]: spec(['config']),
  [F.CREATE_CRYPTO_SESSION]: spec(['opaque'], { reply: ['opaque'] }),
  [F.CLOSE_CRYPTO_SESSION]: spec(['u64']),
  [F.POSTCOPY_ADVISE]: spec(['empty'], { reply: ['empty', 'u64'], replyFds: OPTIONAL }),
  [F.POSTCOPY_LISTEN]: spec(['empty']),
  [F.POSTCOPY_END]: spec(['empty']),
  [F.GET_INFLIGHT_FD]: spec(['inflight'], { reply: ['inflight'], replyFds: ONE }),
  [F.SET_INFLIGHT_FD]: spec(['inflight'], { requestFds: ONE }),
  [F.GPU_SET_SOCKET]: spec(['empty'], { requestFds: ONE }),
  [F.RESET_DEVICE]: spec(['empty']),
  [F.VRING_KICK]: spec(['vring-state']),
  [F.GET_MAX_MEM_SLOTS]: spec(['empty']),
  // In postcopy mode the back-end answers with the region as it mapped it.
  [F.ADD_MEM_REG]: spec(['memory-region'], { requestFds: ONE, reply: ['u64', 'memory-region'] }),
  // "The back-end MAY accept messages with one file descriptor" (and must close it).
  [F.REM_MEM_REG]: spec(['memory-region'], { requestFds: OPTIONAL, reply: ['u64', 'memory-region'] }),
  [F.SET_STATUS]: spec(['u64']),
  [F.GET_STATUS]: spec(['empty']),
  [F.GET_SHARED_OBJECT]: spec(['shared-object'], { replyFds: OPTIONAL }),
  [F.SET_DEVICE_STATE_FD]: spec(['device-state'], { requestFds: ONE, replyFds: stateFd }),
  [F.CHECK_DEVICE_STATE]: spec(['empty']),
} as const;

const B = BackendRequest;
/** "Back-end message types"; the front-end's replies are acknowledgements. */
const BACKEND_SPECS = {
  [B.IOTLB_MSG]: spec(['iotlb']),
  [B.CONFIG_CHANGE_MSG]: spec(['empty']),
  [B.VRING_HOST_NOTIFIER_MSG]: spec(['vring-area'], { requestFds: unlessNoFd }),
  [B.VRING_CALL]: spec(['vring-state']),
  [B.VRING_ERR]: spec(['vring-state']),
  [B.SHARED_OBJECT_ADD]: spec(['shared-object']),
  [B.SHARED_OBJECT_REMOVE]: spec(['shared-object']),
  [B.SHARED_OBJECT_LOOKUP]: spec(['shared-object'], { replyFds: onSuccess }),
} as const;

type FrontendSpecs = typeof FRONTEND_SPECS;
type BackendSpecs = typeof BACKEND_SPECS;

/** One decoded message. `fds` are owned by whoever holds the message: close what you do not keep. */
export interface VhostUserMessage<R extends number = number, P extends Payload = Payload> {
  readonly request: R;
  /** The raw flags word (version, REPLY, NEED_REPLY). */
  readonly flags: number;
  readonly needReply: boolean;
  readonly payload: P;
  readonly fds: readonly number[];
}

type RequestOf<S extends Record<number, Spec<readonly PayloadKind[], readonly PayloadKind[]>>> = {
  [R in keyof S & number]: VhostUserMessage<R, PayloadOf<S[R]['request'][number]>>;
}[keyof S & number];
type ReplyOf<S extends Record<number, Spec<readonly PayloadKind[], readonly PayloadKind[]>>> = {
  [R in keyof S & number]: VhostUserMessage<R, PayloadOf<S[R]['reply'][number]>>;
}[keyof S & number];

/** What a back-end reads on its main socket; `switch (m.request)` narrows the payload. */
export type FrontendRequestMessage = RequestOf<FrontendSpecs>;
/** What a front-end reads on its main socket. */
export type FrontendReplyMessage = ReplyOf<FrontendSpecs>;
/** What a front-end reads on the back-end channel. */
export type BackendRequestMessage = RequestOf<BackendSpecs>;
/** What a back-end reads on the back-end channel. */
export type BackendReplyMessage = ReplyOf<BackendSpecs>;

/** The four message streams: whose requests, and whether this end reads requests or replies. */
export type Stream = 'frontend-requests' | 'frontend-replies' | 'backend-requests' | 'backend-replies';
export interface StreamMessages {
  'frontend-requests': FrontendRequestMessage;
  'frontend-replies': FrontendReplyMessage;
  'backend-requests': BackendRequestMessage;
  'backend-replies': BackendReplyMessage;
}

/** The rule a message broke. */
export type ProtocolRule =
  | PayloadViolation['rule']
  | 'header-version'
  | 'header-flags'
  | 'payload-too-large'
  | 'unknown-request'
  | 'unexpected-reply'
  | 'missing-reply-flag'
  | 'fd-count'
  | 'reserved-bits'
  | 'fds-without-message'
  | 'fds-truncated';

export interface Header {
  readonly request: number;
  readonly flags: number;
  readonly size: number;
}

/**
 * A message broke a protocol rule. Returned, never thrown out of the codec.
 * `fatal`: the byte stream can no longer be framed (or descriptors were lost), so the only
 * answer is to disconnect. Otherwise the message was skipped whole and the connection can go
 * on: reply with an error when `header` asked for one (NEED_REPLY), or disconnect by policy.
 * `fds` came with the bad message; the receiver of this error owns and must close them.
 */
export class VhostUserProtocolError extends Error {
  constructor(
    readonly rule: ProtocolRule,
    detail: string,
    readonly fatal: boolean,
    readonly header: Header | undefined,
    readonly fds: readonly number[],
  ) {
    super(`${rule}: ${detail}`);
    this.name = 'VhostUserProtocolError';
  }
}

const KNOWN_FLAGS = HeaderFlag.VERSION_MASK | HeaderFlag.REPLY | HeaderFlag.NEED_REPLY;

function specsOf(stream: Stream): Record<number, Spec<readonly PayloadKind[], readonly PayloadKind[]> | undefined> {
  return stream.startsWith('frontend') ? FRONTEND_SPECS : BACKEND_SPECS;
}

function nameOf(stream: Stream, request: number): string {
  return stream.startsWith('frontend') ? frontendRequestName(request) : backendRequestName(request);
}

const isReplyStream = (stream: Stream): boolean => stream.endsWith('replies');

/** SET_VRING_KICK/CALL/ERR define bits 0-8 of their u64 only; the rest must be zero. */
function reservedBits(spec: Spec<readonly PayloadKind[], readonly PayloadKind[]>, replying: boolean, p: Payload): string | null {
  if (replying || spec.requestFds !== unlessNoFd || p.kind !== 'u64') return null;
  const extra = p.value & ~(VRING_INDEX_MASK | VRING_NOFD_MASK);
  return extra === 0n ? null : `bits above 8 are reserved, got 0x${p.value.toString(16)}`;
}

/**
 * Check one framed message (`payload` is exactly header.size bytes; reader.ts has checked the
 * version and size bound) on `stream`, with the descriptors that came with it.
 */
export function decodeMessage<S extends Stream>(
  stream: S,
  header: Header,
  payload: DataView,
  fds: readonly number[],
  layout: LayoutOptions,
): StreamMessages[S] | VhostUserProtocolError {
  const fail = (rule: ProtocolRule, detail: string): VhostUserProtocolError =>
    new VhostUserProtocolError(rule, `${nameOf(stream, header.request)}: ${detail}`, false, header, fds);
  if ((header.flags & ~KNOWN_FLAGS) !== 0) return fail('header-flags', `unknown flag bits 0x${(header.flags & ~KNOWN_FLAGS).toString(16)}`);
  const reply = (header.flags & HeaderFlag.REPLY) !== 0;
  const needReply = (header.flags & HeaderFlag.NEED_REPLY) !== 0;
  if (isReplyStream(stream)) {
    if (!reply) return fail('missing-reply-flag', 'a reply without the REPLY flag');
    if (needReply) return fail('header-flags', 'a reply cannot ask for a reply');
  } else if (reply) {
    return fail('unexpected-reply', 'a reply where a request was expected');
  }
  const spec = specsOf(stream)[header.request];
  if (spec === undefined) return fail('unknown-request', 'not a request type of this protocol');
  const decoded = decodePayload(isReplyStream(stream) ? spec.reply : spec.request, payload, layout);
  if (isViolation(decoded)) return fail(decoded.rule, decoded.detail);
  const reserved = reservedBits(spec, isReplyStream(stream), decoded);
  if (reserved !== null) return fail('reserved-bits', reserved);
  const [min, max] = (isReplyStream(stream) ? spec.replyFds : spec.requestFds)(decoded);
  if (fds.length < min || fds.length > max) {
    const want = min === max ? `${min}` : `${min} to ${max}`;
    return fail('fd-count', `carries ${fds.length} descriptors, expected ${want}`);
  }
  const message: VhostUserMessage = { request: header.request, flags: header.flags, needReply, payload: decoded, fds };
  // The table above is what makes this the stream's message type.
  return message as StreamMessages[S];
}

/** A message to encode. */
export interface Outgoing {
  readonly request: number;
  readonly payload: Payload;
  readonly fds?: readonly number[];
  readonly needReply?: boolean;
}

/** Bytes and descriptors ready for UnixSocket.send (descriptors with the first byte). */
export interface Encoded {
  readonly bytes: Uint8Array;
  readonly fds: readonly number[];
}

/**
 * Encode `message` as it travels on `stream`: the payload layout and descriptor count must be
 * what the table allows (the same rules the decoder enforces), or RangeError.
 */
export function encodeMessage(stream: Stream, message: Outgoing, layout: LayoutOptions = { xenMmap: false }): Encoded {
  const name = nameOf(stream, message.request);
  const spec = specsOf(stream)[message.request];
  if (spec === undefined) throw new RangeError(`${name} is not a request type of this protocol`);
  const replying = isReplyStream(stream);
  const kinds: readonly PayloadKind[] = replying ? spec.reply : spec.request;
  if (!kinds.includes(message.payload.kind)) {
    throw new RangeError(`${name} ${replying ? 'reply' : 'request'} carries ${kinds.join(' or ')}, not ${message.payload.kind}`);
  }
  const reserved = reservedBits(spec, replying, message.payload);
  if (reserved !== null) throw new RangeError(`${name}: ${reserved}`);
  const fds = message.fds ?? [];
  const [min, max] = (replying ? spec.replyFds : spec.requestFds)(message.payload);
  if (fds.length < min || fds.length > max || fds.length > MAX_FDS) {
    throw new RangeError(`${name} carries ${min === max ? min : `${min} to ${max}`} descriptors, not ${fds.length}`);
  }
  if (replying && message.needReply === true) throw new RangeError(`a ${name} reply cannot ask for a reply`);
  const flags = HeaderFlag.VERSION | (replying ? HeaderFlag.REPLY : 0) | (message.needReply === true ? HeaderFlag.NEED_REPLY : 0);
  return { bytes: frame(message.request, flags, message.payload, layout), fds };
}

/** Header and payload bytes; the payload has been checked against the table. */
function frame(request: number, flags: number, payload: Payload, layout: LayoutOptions): Uint8Array {
  const size = payloadLength(payload, layout);
  const bytes = new Uint8Array(HEADER_SIZE + size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, request, true);
  view.setUint32(4, flags, true);
  view.setUint32(8, size, true);
  encodePayload(payload, new DataView(bytes.buffer, HEADER_SIZE, size), layout);
  return bytes;
}

/** Encode the reply to `request` (received on the stream whose replies are `stream`). */
export function encodeReply(
  stream: 'frontend-replies' | 'backend-replies',
  request: number,
  payload: Payload,
  fds: readonly number[] = [],
  layout?: LayoutOptions,
): Encoded {
  return encodeMessage(stream, { request, payload, fds }, layout);
}

/**
 * The REPLY_ACK answer to `request`: u64 zero for success, `code` (non-zero) for failure.
 * NEED_REPLY may be set on any request, one of a type this codec does not know included, so
 * any request code can be acknowledged; a type with an explicit reply body gets that body
 * instead ("VHOST_USER_PROTOCOL_F_REPLY_ACK"), and asking to ack it is a RangeError.
 */
export function encodeAck(stream: 'frontend-replies' | 'backend-replies', request: number, code: bigint = 0n): Encoded {
  const payload: Payload = { kind: 'u64', value: code };
  if (specsOf(stream)[request] !== undefined) return encodeMessage(stream, { request, payload });
  if (!Number.isInteger(request) || request < 0 || request > 0xffff_ffff) {
    throw new RangeError(`request type ${request} does not fit 32 bits`);
  }
  return { bytes: frame(request, HeaderFlag.VERSION | HeaderFlag.REPLY, payload, { xenMmap: false }), fds: [] };
}

/**
 * The table's rules for `request` on `stream`: the payload layouts it may carry and how many
 * descriptors go with a given payload. Undefined for request types the protocol lacks.
 */
export function messageRules(
  stream: Stream,
  request: number,
): { readonly kinds: readonly PayloadKind[]; fds(payload: Payload): readonly [number, number] } | undefined {
  const spec = specsOf(stream)[request];
  if (spec === undefined) return undefined;
  return isReplyStream(stream) ? { kinds: spec.reply, fds: spec.replyFds } : { kinds: spec.request, fds: spec.requestFds };
}

/**
 * Whether the reply to `request` is an acknowledgement (u64) rather than a body; true for
 * request types this codec does not know, which can only be acknowledged.
 */
export function repliesWithAck(stream: 'frontend-requests' | 'backend-requests', request: number): boolean {
  const spec = specsOf(stream)[request];
  return spec === undefined || (spec.reply.length === 1 && spec.reply[0] === 'u64');
}

export type { Payload, PayloadKind, PayloadOf, MemoryRegionDescription, LayoutOptions } from './payloads.ts';
