// The client's bounded retry against a real hookrelay that rate-limits: one request per 2 s
// with no burst, so a second request at once is refused with 429 and Retry-After.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { HookrelayClient, HookrelayError } from "../src/index.js";
import { Receiver, startHookrelay, usageEvent, type Hookrelay } from "./harness.js";

let receiver: Receiver;
let server: Hookrelay;

before(async () => {
  receiver = await Receiver.start();
  server = await startHookrelay(receiver.url, {
    WEBHOOK_RATE_LIMIT: "1",
    WEBHOOK_RATE_WINDOW: "2",
    WEBHOOK_BURST_ALLOWANCE: "0",
  });
});

after(async () => {
  await server?.stop();
  await receiver?.stop();
});

/** A fetch that records the status of every answer, to see the retries happen. */
function recording() {
  const statuses: number[] = [];
  const fetchAndRecord: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    statuses.push(response.status);
    return response;
  };
  return { statuses, fetch: fetchAndRecord };
}

test("429 with maxRetries 0: the typed error with retryAfter", async () => {
  const client = new HookrelayClient({ baseUrl: server.url, ingestSecret: server.ingestSecret, maxRetries: 0 });
  await client.trackUsage(usageEvent()); // uses up the allowance
  await assert.rejects(client.trackUsage(usageEvent()), (error: unknown) => {
    assert.ok(error instanceof HookrelayError);
    assert.equal(error.status, 429);
    assert.equal(error.code, "rate_limited");
    assert.ok(error.retryAfter !== undefined && error.retryAfter >= 1 && error.retryAfter <= 2, `retryAfter ${error.retryAfter}`);
    return true;
  });
});

test("429 is retried after Retry-After and succeeds within the bound, stored once", async () => {
  const { statuses, fetch } = recording();
  const client = new HookrelayClient({ baseUrl: server.url, ingestSecret: server.ingestSecret, maxRetryWaitMs: 5000, fetch });
  const event = usageEvent();
  const started = Date.now();
  // The previous test's refused request may have used the allowance up again: the first
  // attempt here is refused and the client must wait it out.
  const accepted = await client.trackUsage(event);
  const elapsed = Date.now() - started;
  assert.equal(accepted.duplicate, false);
  assert.equal(statuses.at(-1), 202);
  assert.ok(statuses.slice(0, -1).length >= 1 && statuses.slice(0, -1).every((s) => s === 429), `statuses ${statuses}`);
  assert.ok(elapsed >= 900 && elapsed < 10_000, `took ${elapsed} ms`);
  await receiver.waitFor(accepted.id);
});

test("a Retry-After beyond maxRetryWaitMs is not waited for", async () => {
  const { statuses, fetch } = recording();
  const client = new HookrelayClient({ baseUrl: server.url, ingestSecret: server.ingestSecret, maxRetryWaitMs: 100, fetch });
  await client.trackUsage(usageEvent()).catch(() => undefined); // uses up the allowance, if any is left
  statuses.length = 0;
  const started = Date.now();
  await assert.rejects(client.trackUsage(usageEvent()), { status: 429, code: "rate_limited" });
  assert.deepEqual(statuses, [429]);
  assert.ok(Date.now() - started < 1000);
});
