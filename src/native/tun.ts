/**
 * Linux TUN/TAP (Documentation/networking/tuntap.rst): a TAP interface is a character device
 * whose every read returns one Ethernet frame the kernel sent out of the interface and whose
 * every write injects one. With IFF_VNET_HDR each frame is preceded by a virtio_net_hdr, so
 * checksum and segmentation offload metadata cross the boundary unchanged.
 *
 * Descriptors are non-blocking: read answers -1 and write false when they would block, and
 * readiness.ts says when to read again.
 */
import { declare } from './libc.ts';
import { O_CLOEXEC, O_NONBLOCK, closeFd } from './fd.ts';
import { Errno, SyscallError, check, lastErrno } from './syscall-error.ts';

const openFn = declare<(path: string, flags: number) => number>('int open(const char *path, int flags)');
const ioctlPtr = declare<(fd: number, request: number, arg: Uint8Array) => number>('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)');
const ioctlInt = declare<(fd: number, request: number, arg: number) => number>('int ioctl(int fd, unsigned long request, unsigned long arg)');
const read = declare<(fd: number, buf: Uint8Array, count: number) => number>('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)');
const write = declare<(fd: number, buf: Uint8Array, count: number) => number>('intptr_t write(int fd, const uint8_t *buf, size_t count)');

const O_RDWR = 2;
/** linux/if_tun.h: _IOW('T', 202, int) and friends. */
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
/** struct ifreq: a 16-byte name, then a union whose first member here is the short flags. */
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;

/** TUNSETOFFLOAD bits: what the kernel may hand us unfinished (partial checksums, GSO frames). */
export const TunOffload = {
  CSUM: 0x01,
  TSO4: 0x02,
  TSO6: 0x04,
  TSO_ECN: 0x08,
  UFO: 0x10,
} as const;

export interface Tap {
  readonly fd: number;
  /** The interface name the kernel gave (the one asked for, or tapN). */
  readonly name: string;
}

/**
 * Create (or attach to) TAP interface `name` ("" lets the kernel choose), without packet
 * information and with a virtio_net_hdr of `vnetHeaderSize` bytes before each frame (0: none).
 * Needs CAP_NET_ADMIN.
 */
export function openTap(name: string, vnetHeaderSize: number): Tap {
  const encoded = new TextEncoder().encode(name);
  if (encoded.length >= IFNAMSIZ || encoded.includes(0)) {
    throw new RangeError(`TAP interface name "${name}" is not a name of at most ${IFNAMSIZ - 1} bytes`);
  }
  const fd = check('open', openFn('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC), 'opening /dev/net/tun');
  try {
    const ifreq = new Uint8Array(IFREQ_SIZE);
    ifreq.set(encoded);
    const flags = IFF_TAP | IFF_NO_PI | (vnetHeaderSize > 0 ? IFF_VNET_HDR : 0);
    ifreq[IFNAMSIZ] = flags & 0xff;
    ifreq[IFNAMSIZ + 1] = flags >> 8;
    check('ioctl', ioctlPtr(fd, TUNSETIFF, ifreq), `creating TAP interface "${name}" (TUNSETIFF)`);
    if (vnetHeaderSize > 0) {
      const size = Uint8Array.of(vnetHeaderSize & 0xff, vnetHeaderSize >> 8, 0, 0);
      check('ioctl', ioctlPtr(fd, TUNSETVNETHDRSZ, size), `setting the vnet header size to ${vnetHeaderSize} (TUNSETVNETHDRSZ)`);
    }
    const end = ifreq.indexOf(0);
    return { fd, name: new TextDecoder().decode(ifreq.subarray(0, end < 0 ? IFNAMSIZ : end)) };
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

/** TUNSETOFFLOAD: the TunOffload bits the kernel may use on frames it hands us. */
export function setTapOffload(fd: number, offloads: number): void {
  check('ioctl', ioctlInt(fd, TUNSETOFFLOAD, offloads), `setting TAP offloads 0x${offloads.toString(16)} (TUNSETOFFLOAD)`);
}

/** Read one frame into `buf`: its length, or -1 when there is none now. */
export function readTap(fd: number, buf: Uint8Array): number {
  const n = read(fd, buf, buf.length);
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN) return -1;
  throw new SyscallError('read', errno, `reading TAP fd ${fd}`);
}

/**
 * Write one frame; false when the interface cannot take it now (its queue is full, or it is
 * down: the kernel answers EIO while the interface has no carrier).
 */
export function writeTap(fd: number, frame: Uint8Array): boolean {
  if (write(fd, frame, frame.length) >= 0) return true;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN || errno === Errno.EIO) return false;
  throw new SyscallError('write', errno, `writing TAP fd ${fd}`);
}
