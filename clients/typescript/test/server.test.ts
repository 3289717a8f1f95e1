// End to end against a real hookrelay: events sent with the client are accepted, stored once,
// delivered to a receiver, and verified there with verifyWebhook.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  HookrelayClient,
  HookrelayError,
  verifyWebhook,
  WebhookVerificationError,
  type DeliveredEvent,
  type UsageEvent,
} from "../src/index.js";
import { Receiver, startHookrelay, usageEvent, type Hookrelay } from "./harness.js";

let receiver: Receiver;
let server: Hookrelay;
let client: HookrelayClient;

before(async () => {
  receiver = await Receiver.start();
  server = await startHookrelay(receiver.url);
  client = new HookrelayClient({ baseUrl: server.url, ingestSecret: server.ingestSecret, adminToken: server.adminToken });
});

after(async () => {
  await server?.stop();
  await receiver?.stop();
});

/** The session's figures from the admin API: how many events hookrelay really stored. */
async function storedQueries(sessionId: string): Promise<number> {
  const response = await fetch(`${server.url}/api/v1/sessions/${sessionId}`, {
    headers: { authorization: `Bearer ${server.adminToken}` },
  });
  assert.equal(response.status, 200, await response.clone().text());
  return ((await response.json()) as { queries: number }).queries;
}

const rejectsWith = (reason: string) => (error: unknown) =>
  error instanceof WebhookVerificationError && error.reason === reason;

describe("against a running hookrelay", () => {
  test("trackUsage: accepted, delivered, and the delivery verifies", async () => {
    const event = usageEvent({ user_agent: "ts-client-test" });
    const accepted = await client.trackUsage(event);
    assert.match(accepted.id, /^evt_/);
    assert.equal(accepted.duplicate, false);

    const delivery = await receiver.waitFor(accepted.id);
    const payload = verifyWebhook(server.webhookSecret, delivery.headers, delivery.rawBody);
    assert.equal(payload.event_id, accepted.id);
    assert.equal(payload.event_type, "usage.tracked");
    assert.equal(payload.session_id, event.session_id);
    assert.equal(payload.query.summary, event.query);
    assert.equal(payload.query.category, "debugging");
    assert.deepEqual(payload.response, {
      model_used: event.model_name,
      response_time_ms: event.response_time_ms,
      estimated_tokens: event.estimated_tokens,
      success: true,
    });
    assert.equal(payload.user_agent, "ts-client-test");

    // A Headers instance works the same as Node's header object.
    const headers = new Headers();
    for (const [name, value] of Object.entries(delivery.headers)) headers.set(name, String(value));
    assert.equal(verifyWebhook(server.webhookSecret, headers, delivery.rawBody.toString()).event_id, accepted.id);

    // What must be refused: an altered body, another secret, a stale delivery.
    const altered = delivery.rawBody.toString().replace(event.session_id, "session_forged");
    assert.notEqual(altered, delivery.rawBody.toString());
    assert.throws(() => verifyWebhook(server.webhookSecret, delivery.headers, altered), rejectsWith("no_matching_signature"));
    assert.throws(() => verifyWebhook(server.ingestSecret, delivery.headers, delivery.rawBody), rejectsWith("no_matching_signature"));
    const sent = Number(delivery.headers["webhook-timestamp"]) * 1000;
    assert.throws(
      () => verifyWebhook(server.webhookSecret, delivery.headers, delivery.rawBody, { now: new Date(sent + 301_000) }),
      rejectsWith("timestamp_out_of_tolerance"),
    );
    assert.ok(verifyWebhook(server.webhookSecret, delivery.headers, delivery.rawBody, { now: new Date(sent + 299_000) }));
  });

  test("trackUsageBatch: every event stored and delivered", async () => {
    const sessionId = usageEvent().session_id;
    const events: UsageEvent[] = [1, 2, 3].map((n) => usageEvent({ session_id: sessionId, estimated_tokens: n }));
    const accepted = await client.trackUsageBatch(events);
    assert.equal(accepted.ids.length, 3);
    assert.deepEqual(accepted.events.map((e) => e.id), accepted.ids);
    assert.ok(accepted.events.every((e) => !e.duplicate));
    assert.equal(new Set(accepted.ids).size, 3);

    const tokens = [];
    for (const id of accepted.ids) {
      const delivery = await receiver.waitFor(id);
      tokens.push(verifyWebhook(server.webhookSecret, delivery.headers, delivery.rawBody).response.estimated_tokens);
    }
    assert.deepEqual(tokens.sort(), [1, 2, 3]);
    assert.equal(await storedQueries(sessionId), 3);
  });

  test("idempotency: a repeat answers duplicate with the same id, and is stored and delivered once", async () => {
    const event = usageEvent();
    const key = `order-${event.session_id}`;
    const first = await client.trackUsage(event, { idempotencyKey: key });
    const again = await client.trackUsage(event, { idempotencyKey: key });
    assert.deepEqual(first, { id: first.id, duplicate: false });
    assert.deepEqual(again, { id: first.id, duplicate: true });

    // A batch retried under one key is recognised item by item.
    const batch = [usageEvent(), usageEvent()];
    const batchFirst = await client.trackUsageBatch(batch, { idempotencyKey: `${key}-batch` });
    const batchAgain = await client.trackUsageBatch(batch, { idempotencyKey: `${key}-batch` });
    assert.deepEqual(batchAgain.ids, batchFirst.ids);
    assert.ok(batchAgain.events.every((e) => e.duplicate));

    // Let anything queued go out: an event sent after the duplicate arrives, then count.
    await receiver.waitFor(first.id);
    const later = await client.trackUsage(usageEvent());
    await receiver.waitFor(later.id);
    assert.equal(receiver.deliveriesOf(first.id).length, 1);
    assert.equal(await storedQueries(event.session_id), 1);

    // The same key with another body is a client bug, refused with its own code.
    await assert.rejects(client.trackUsage({ ...event, success: false }, { idempotencyKey: key }), {
      status: 422,
      code: "idempotency_key_reused",
    });
  });

  test("sendEvent: any event type is accepted and delivered with its data", async () => {
    const data = { rule: "dlq_depth", level: "warning", value: 51 };
    const accepted = await client.sendEvent("alert.fired", data);
    const delivery = await receiver.waitFor(accepted.id);
    const payload = verifyWebhook<DeliveredEvent<typeof data>>(server.webhookSecret, delivery.headers, delivery.rawBody);
    assert.equal(payload.event_type, "alert.fired");
    assert.deepEqual(payload.data, data);

    // usage.tracked through the generic route is a usage event like any other.
    const event = usageEvent();
    const usage = await client.sendEvent("usage.tracked", event);
    const usageDelivery = await receiver.waitFor(usage.id);
    assert.equal(verifyWebhook(server.webhookSecret, usageDelivery.headers, usageDelivery.rawBody).session_id, event.session_id);
  });

  test("typed errors: invalid_field for a malformed event that bypassed the types", async () => {
    const malformed = { ...usageEvent(), response_time_ms: "slow" } as unknown as UsageEvent;
    await assert.rejects(client.trackUsage(malformed), (error: unknown) => {
      assert.ok(error instanceof HookrelayError);
      assert.equal(error.status, 422);
      assert.equal(error.code, "invalid_field");
      assert.match(error.detail, /response_time_ms/);
      return true;
    });
  });

  test("typed errors: invalid_signature for a wrong ingest secret, missing_signature for none", async () => {
    const wrongSecret = "not-the-ingest-secret-0123456789abcdef";
    const wrong = new HookrelayClient({ baseUrl: server.url, ingestSecret: wrongSecret });
    await assert.rejects(wrong.trackUsage(usageEvent()), (error: unknown) => {
      assert.ok(error instanceof HookrelayError);
      assert.equal(error.status, 401);
      assert.equal(error.code, "invalid_signature");
      assert.ok(!String(error).includes(wrongSecret) && !error.detail.includes(wrongSecret));
      return true;
    });
    const unsigned = new HookrelayClient({ baseUrl: server.url });
    await assert.rejects(unsigned.trackUsage(usageEvent()), { status: 401, code: "missing_signature" });
  });

  test("admin: health() with the token, unauthorized without it", async () => {
    const health = await client.health();
    assert.equal(typeof health.health.status, "string", JSON.stringify(health));
    assert.equal(health.worker_alive, true);
    const anonymous = new HookrelayClient({ baseUrl: server.url, adminToken: "wrong-token" });
    await assert.rejects(anonymous.health(), { status: 401, code: "unauthorized" });
  });

  test("network_error after bounded retries when nothing listens", async () => {
    const closed = new HookrelayClient({ baseUrl: "http://127.0.0.1:9", maxRetries: 2, maxRetryWaitMs: 100 });
    await assert.rejects(closed.trackUsage(usageEvent()), { status: 0, code: "network_error" });
  });
});
