// The one way every route and the websocket find the caller's session, so the same mistake gets the
// same answer everywhere: a session that does not exist or belongs to another API key is 404
// session_not_found (never 403: another key must not learn it exists); a session of another model
// than the request's is 409 model_mismatch; the store's own errors map through the one table
// (queue-errors.ts). A malformed id never gets here: the schemas refuse it (400) first.
import type { CatalogModel } from '../model/model-catalog.ts';
import type { SessionRecord } from '../state/session-record.ts';
import type { ApiDeps } from './deps.ts';
import { ApiError, sessionNotFound } from './errors.ts';
import { fromQueueError } from './queue-errors.ts';

/** The session if it exists and belongs to `owner`; `param`: where the request named it (for the 404). */
export async function ownedSession(deps: ApiDeps, owner: string | undefined, id: string, param: string | null): Promise<SessionRecord> {
  const rec = await deps.store.get(id).catch((err: unknown) => {
    throw fromQueueError(err);
  });
  if (!rec || rec.owner !== owner) throw sessionNotFound(id, param);
  return rec;
}

/** The caller's session named by a generation request's `session_id`, which must be of `model`. */
export async function sessionOfModel(deps: ApiDeps, owner: string | undefined, id: string, model: CatalogModel): Promise<SessionRecord> {
  const rec = await ownedSession(deps, owner, id, 'session_id');
  if (rec.model !== model.name) {
    throw new ApiError('conflict', `session ${rec.id} belongs to model '${rec.model}', not '${model.name}'`, 'model', 'model_mismatch');
  }
  return rec;
}
