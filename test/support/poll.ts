// Waiting on a condition in tests: checked every 25 ms until true, failing with `what` past the deadline.
import assert from 'node:assert/strict';

export async function pollUntil(what: string, check: () => Promise<boolean> | boolean, deadlineMs = 60_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
