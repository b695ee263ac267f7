// The error of session storage, shared by the store (session-store.ts) and the request log
// (queue/session-log.ts); its own module so the API and queue can map it without the store.

export type SessionErrorCode = 'not_found' | 'model_mismatch' | 'state_mismatch' | 'conflict' | 'lease_lost';

export class SessionError extends Error {
  readonly code: SessionErrorCode;
  constructor(code: SessionErrorCode, message: string) {
    super(message);
    this.name = 'SessionError';
    this.code = code;
  }
}
