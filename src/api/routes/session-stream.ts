// WebSocket streaming into a session: GET /v1/sessions/:id/stream. The route checks the caller owns
// the session, then each socket is a StreamConnection (../stream/stream-connection.ts; the messages:
// ../stream/protocol.ts).
//
// A session that does not exist or is another key's is refused before the upgrade with the same
// HTTP 404 session_not_found as REST.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ApiDeps } from '../deps.ts';
import { SessionParamsSchema, errorResponses } from '../schemas.ts';
import { sessionNotFound } from '../errors.ts';
import { ownedSession } from '../session-access.ts';
import { STREAM_DOC } from '../stream/protocol.ts';
import { StreamConnection, type WsLike } from '../stream/stream-connection.ts';
import { isValidSessionId } from '../../state/keys.ts';
import type { SessionRecord } from '../../state/session-record.ts';

export default async function sessionStreamRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const found = new WeakMap<FastifyRequest, SessionRecord>();

  app.get<{ Params: { id: string } }>(
    '/v1/sessions/:id/stream',
    {
      websocket: true,
      schema: {
        ...STREAM_DOC,
        params: SessionParamsSchema,
        response: {
          101: { type: 'null', description: 'Switching Protocols: the websocket is open; messages as described above' },
          ...errorResponses(404, 409),
        },
      },
      // Runs before the upgrade: a thrown ApiError becomes a plain HTTP JSON error response.
      // The same lookup, and so the same 404 session_not_found (param id), as GET /v1/sessions/{id}.
      preHandler: async (req) => {
        const id = req.params.id;
        if (!isValidSessionId(id)) throw sessionNotFound(id, 'id'); // the params schema refuses these first; kept as a guard
        found.set(req, await ownedSession(deps, req.owner, id, 'id'));
      },
    },
    (socket: unknown, req: FastifyRequest<{ Params: { id: string } }>) => {
      // It lives on in the socket's listeners.
      new StreamConnection(socket as WsLike, deps, req.params.id, found.get(req)!, req.log);
    },
  );
}
