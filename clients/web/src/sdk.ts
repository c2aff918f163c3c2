// The parts of matrix-js-sdk the app uses, imported from their modules rather than the
// package's index: the index also pulls in the widget API and embedded-client code, which
// the app never runs, and they would cost ~30 KB gzipped of the initial load.
// createClient() below is the index's, minus the legacy crypto store: end-to-end
// encryption (later) uses initRustCrypto, whose WASM is loaded only when it starts.

import { type ICreateClientOpts, MatrixClient } from "matrix-js-sdk/lib/client.js";
import { MatrixScheduler } from "matrix-js-sdk/lib/scheduler.js";
import { MemoryStore } from "matrix-js-sdk/lib/store/memory.js";

export { EventType } from "matrix-js-sdk/lib/@types/event.js";
export { ClientEvent, MatrixClient } from "matrix-js-sdk/lib/client.js";
export { HttpApiEvent } from "matrix-js-sdk/lib/http-api/interface.js";
export { MatrixEvent } from "matrix-js-sdk/lib/models/event.js";
export { EventStatus } from "matrix-js-sdk/lib/models/event-status.js";
export { Room, RoomEvent } from "matrix-js-sdk/lib/models/room.js";
export { RoomStateEvent } from "matrix-js-sdk/lib/models/room-state.js";
export { RoomMemberEvent } from "matrix-js-sdk/lib/models/room-member.js";
export { Direction } from "matrix-js-sdk/lib/models/event-timeline.js";
export { SyncState } from "matrix-js-sdk/lib/sync.js";

export function createClient(opts: ICreateClientOpts): MatrixClient {
  return new MatrixClient({
    ...opts,
    store: opts.store ?? new MemoryStore({ localStorage: globalThis.localStorage }),
    scheduler: opts.scheduler ?? new MatrixScheduler(),
  });
}
