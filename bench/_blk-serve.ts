/**
 * `paravirt serve blk --read-only` with the file backend's I/O engine chosen on the command
 * line, for bench/blk-threading.ts: node --import tsx bench/_blk-serve.ts SOCKET IMAGE IO [THREADS].
 * Prints "listening" once the socket accepts a front-end; stops on SIGTERM.
 */
import { pino } from 'pino';
import { vhostUserBlkDevice } from '../src/devices/blk/device.ts';
import { FileBackend, type FileIo } from '../src/storage/file-backend.ts';
import { BackendServer } from '../src/transports/vhost-user/backend-server.ts';

const [socketPath, image, io, threads] = process.argv.slice(2);
const backend = await FileBackend.open(image, { readOnly: true, io: io as FileIo, threads: threads === undefined ? undefined : Number(threads) });
const server = BackendServer.listen(vhostUserBlkDevice(backend, { readOnly: true }), { socketPath }, pino({ level: 'warn' }));
console.log('listening');
process.once('SIGTERM', () => void server.close());
await server.closed;
await backend.close();
