// Entry point of an I/O thread. A worker does not inherit the TypeScript loader the main thread
// registered (bin/paravirt.js registers it at run time), so it registers its own, then loads the
// module named in workerData.
import { register } from 'tsx/esm/api';
import { workerData } from 'node:worker_threads';

register();
await import(workerData.entry);
