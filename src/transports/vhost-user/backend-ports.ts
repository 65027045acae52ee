/**
 * The operating-system side of the back-end (BackendPorts) on the native layer: region fds
 * mapped with mmap, kick eventfds watched on Node's event loop, calls and errors signalled by
 * eventfd writes, and CONFIG_CHANGE_MSG on the back-end request socket.
 *
 * Every descriptor here came from the front-end, so none is trusted to be what it claims: a
 * "memory region" may be a file shorter than the region (touching the missing part would raise
 * SIGBUS and kill the process), a "kick eventfd" may be a pipe or a regular file. Each is
 * checked before use and a bad one becomes an error, never a crash.
 */
import { fstatSync } from 'node:fs';
import type { Logger } from 'pino';
import { EventFd } from '../../native/eventfd.ts';
import { closeFd } from '../../native/fd.ts';
import { Mapping, PAGE_SIZE } from '../../native/mapping.ts';
import { createMemfd } from '../../native/memfd.ts';
import { watch } from '../../native/readiness.ts';
import { UnixSocket } from '../../native/unix-socket.ts';
import type { BackendPorts } from './backend.ts';
import { BackendRequest, HEADER_SIZE, HeaderFlag } from './constants.ts';
import type { RegionMapping } from './memory-table.ts';


/**
 * Map `size` bytes of `fd` from byte `offset`. mmap wants a page-aligned file offset, so the
 * mapping starts at the page holding `offset` and the region is a view past its head.
 */
export function mapRegion(fd: number, offset: number, size: number): RegionMapping {
  const st = fstatSync(fd);
  // Only regular files (memfd, hugetlbfs, /dev/shm) and shared memory objects have a size to check.
  if (!st.isFile()) throw new Error(`fd ${fd} is not a file that can back guest memory`);
  if (st.size < offset + size) {
    throw new Error(`the file behind fd ${fd} has ${st.size} bytes, fewer than the region's end at ${offset + size}`);
  }
  const head = offset % PAGE_SIZE;
  const mapping = Mapping.shared(fd, size + head, { offset: offset - head });
  const bytes = mapping.bytes.subarray(head, head + size);
  return {
    bytes,
    unmap: () => mapping.unmap(),
    // MADV_REMOVE frees whole host pages of the shared file (a hole punched in the memfd, so the
    // front-end's own mapping shrinks too); partial pages at either end can only be zeroed.
    discard(offset: number, length: number): void {
      const start = head + offset;
      const end = start + length;
      const inner = Math.ceil(start / PAGE_SIZE) * PAGE_SIZE;
      const innerEnd = Math.max(inner, Math.floor(end / PAGE_SIZE) * PAGE_SIZE);
      if (innerEnd > inner) mapping.advise(inner, innerEnd - inner, 'remove');
      bytes.fill(0, offset, Math.min(inner, end) - head);
      bytes.fill(0, innerEnd - head, offset + length);
    },
  };
}

export function createBackendPorts(log: Logger): BackendPorts {
  // Call and error eventfds, adopted once (adopting sets O_NONBLOCK) and forgotten on close.
  const signals = new Map<number, EventFd>();
  return {
    mapRegion,
    watchKick(fd: number, onKick: () => void): () => void {
      const kick = EventFd.adopt(fd);
      const watcher = watch(fd, {
        readable: () => {
          try {
            // Consume the counter first: readiness is level-triggered.
            if (kick.take() > 0n) onKick();
          } catch (err) {
            // Not an eventfd after all (a pipe with a short write, a closed peer): stop watching.
            log.warn({ fd, err: (err as Error).message }, 'kick fd unusable; ring no longer kicked');
            watcher.close();
          }
        },
        error: (err) => log.warn({ fd, err: err.message }, 'kick fd unusable; ring no longer kicked'),
      });
      return () => watcher.close();
    },
    signal(fd: number): void {
      try {
        let eventFd = signals.get(fd);
        if (eventFd === undefined) {
          eventFd = EventFd.adopt(fd);
          signals.set(fd, eventFd);
        }
        eventFd.signal();
      } catch (err) {
        log.warn({ fd, err: (err as Error).message }, 'cannot signal the front-end');
      }
    },
    sendConfigChange(fd: number): void {
      // A header alone: no payload, and no reply requested (the channel is never read back).
      const message = new Uint8Array(HEADER_SIZE);
      const view = new DataView(message.buffer);
      view.setUint32(0, BackendRequest.CONFIG_CHANGE_MSG, true);
      view.setUint32(4, HeaderFlag.VERSION, true);
      view.setUint32(8, 0, true);
      try {
        // Non-blocking: a front-end that stops reading its channel loses notifications, it
        // cannot stall the back-end.
        if (new UnixSocket(fd).send(message) !== message.length) {
          log.warn({ fd }, 'back-end request channel full; configuration change not sent');
        }
      } catch (err) {
        log.warn({ fd, err: (err as Error).message }, 'cannot send a configuration change');
      }
    },
    createSharedMemory: createMemfd,
    close(fd: number): void {
      signals.delete(fd);
      try {
        closeFd(fd);
      } catch (err) {
        log.warn({ fd, err: (err as Error).message }, 'closing a front-end descriptor failed');
      }
    },
  };
}
