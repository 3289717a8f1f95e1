// The client's retry and error behaviour against a scripted fetch: what the real server cannot
// be made to do on demand (a 503, an HTTP-date Retry-After, a dropped connection).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { inspect } from "node:util";

import { HookrelayClient, HookrelayError, parseRetryAfter, signStandard, type UsageEvent } from "../src/index.js";

const event: UsageEvent = {
  session_id: "s",
  query: "q",
  model_name: "m",
  response_time_ms: 1,
  estimated_tokens: 2,
  success: true,
};
const SECRET = "ingest-secret-that-must-never-be-printed";
const TOKEN = "admin-token-that-must-never-be-printed";

interface Call {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** A fetch answering from a script, one entry per call; an Error entry is a dropped connection. */
function scripted(...answers: (Response | Error)[]) {
  const calls: Call[] = [];
  const fetch = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
    calls.push({ url: String(url), headers: init?.headers as Record<string, string>, body: String(init?.body) });
    const answer = answers.shift();
    if (!answer) throw new Error("more calls than scripted");
    if (answer instanceof Error) throw answer;
    return answer;
  };
  return { calls, fetch: fetch as typeof globalThis.fetch };
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
const accepted = () => json(202, { id: "evt_1", duplicate: false });
const refused = (status: number, code: string, headers: Record<string, string> = {}) =>
  json(status, { code, detail: `${code} detail` }, headers);

describe("HookrelayClient retries", () => {
  test("503 then 202: each attempt signed afresh, one idempotency key, same body", async () => {
    const { calls, fetch } = scripted(refused(503, "overloaded", { "retry-after": "0" }), accepted());
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test/", ingestSecret: SECRET, fetch });
    assert.deepEqual(await client.trackUsage(event), { id: "evt_1", duplicate: false });

    assert.equal(calls.length, 2);
    const [first, second] = calls as [Call, Call];
    assert.equal(first.url, "http://hookrelay.test/api/webhook/usage");
    assert.equal(first.body, second.body);
    assert.deepEqual(JSON.parse(first.body), event);
    assert.match(first.headers["idempotency-key"]!, /^[0-9a-f-]{36}$/);
    assert.equal(first.headers["idempotency-key"], second.headers["idempotency-key"]);
    assert.notEqual(first.headers["webhook-id"], second.headers["webhook-id"]);
    for (const call of calls) {
      const id = call.headers["webhook-id"]!;
      const ts = Number(call.headers["webhook-timestamp"]);
      assert.ok(Math.abs(ts - Date.now() / 1000) < 5);
      assert.equal(call.headers["webhook-signature"], signStandard(SECRET, id, ts, call.body));
    }
  });

  test("a caller's idempotency key is sent as given; each call without one gets its own", async () => {
    const { calls, fetch } = scripted(accepted(), accepted(), accepted());
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch });
    await client.trackUsage(event, { idempotencyKey: "gw-request-42" });
    await client.trackUsage(event);
    await client.trackUsage(event);
    assert.equal(calls[0]!.headers["idempotency-key"], "gw-request-42");
    assert.notEqual(calls[1]!.headers["idempotency-key"], calls[2]!.headers["idempotency-key"]);
    // Unsigned without an ingest secret.
    assert.equal(calls[0]!.headers["webhook-signature"], undefined);
  });

  test("network errors and 507 are retried; Retry-After as an HTTP date is honoured", async () => {
    const soon = new Date(Date.now() + 1000).toUTCString();
    const { calls, fetch } = scripted(
      new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }) }),
      refused(507, "storage_full", { "retry-after": soon }),
      accepted(),
    );
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch, maxRetryWaitMs: 5000 });
    const started = Date.now();
    await client.trackUsage(event);
    assert.equal(calls.length, 3);
    // The date is whole seconds away, so at least some of the second is waited for.
    assert.ok(Date.now() - started >= 200, "the HTTP-date Retry-After was not waited for");
  });

  test("out of retries: the last typed error, with its Retry-After", async () => {
    const { calls, fetch } = scripted(
      refused(429, "rate_limited", { "retry-after": "0" }),
      refused(429, "rate_limited", { "retry-after": "0" }),
      refused(429, "rate_limited", { "retry-after": "0" }),
    );
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch, maxRetries: 2 });
    await assert.rejects(client.trackUsage(event), (error: unknown) => {
      assert.ok(error instanceof HookrelayError);
      assert.equal(error.status, 429);
      assert.equal(error.code, "rate_limited");
      assert.equal(error.retryAfter, 0);
      return true;
    });
    assert.equal(calls.length, 3);
  });

  test("a Retry-After beyond the bound is not waited for: the error comes back at once", async () => {
    const { calls, fetch } = scripted(refused(503, "storage_unavailable", { "retry-after": "120" }));
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch, maxRetryWaitMs: 1000 });
    const started = Date.now();
    await assert.rejects(client.trackUsage(event), { code: "storage_unavailable", retryAfter: 120 });
    assert.equal(calls.length, 1);
    assert.ok(Date.now() - started < 500);
  });

  test("a refusal that retrying cannot fix is thrown after one attempt", async () => {
    const { calls, fetch } = scripted(refused(422, "invalid_field"));
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch });
    await assert.rejects(client.trackUsage(event), { status: 422, code: "invalid_field", detail: "invalid_field detail" });
    assert.equal(calls.length, 1);
  });

  test("an answer that is not hookrelay's error shape is unexpected_response", async () => {
    const { fetch } = scripted(new Response("<html>Bad gateway</html>", { status: 502 }));
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch });
    await assert.rejects(client.trackUsage(event), (error: unknown) => {
      assert.ok(error instanceof HookrelayError);
      assert.equal(error.code, "unexpected_response");
      assert.equal(error.status, 502);
      assert.match(error.detail, /Bad gateway/);
      return true;
    });
  });

  test("a dropped connection, out of retries, is network_error with the cause", async () => {
    const { calls, fetch } = scripted(new TypeError("fetch failed"), new TypeError("fetch failed"));
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch, maxRetries: 1, maxRetryWaitMs: 50 });
    await assert.rejects(client.trackUsage(event), { status: 0, code: "network_error" });
    assert.equal(calls.length, 2);
  });
});

describe("HookrelayClient input checks", () => {
  test("an idempotency key hookrelay would refuse is refused before sending", async () => {
    const { calls, fetch } = scripted(accepted());
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", fetch });
    for (const key of ["", "with space", "ключ", "k".repeat(256)]) {
      await assert.rejects(client.trackUsage(event, { idempotencyKey: key }), TypeError);
    }
    assert.equal(calls.length, 0);
    await client.trackUsage(event, { idempotencyKey: "k".repeat(255) });
    assert.equal(calls.length, 1);
  });

  test("a base URL that is not a URL fails at construction", () => {
    assert.throws(() => new HookrelayClient({ baseUrl: "127.0.0.1:8000" }), TypeError);
    assert.equal(new HookrelayClient({ baseUrl: "http://h:1/prefix/" }).baseUrl, "http://h:1/prefix");
  });
});

describe("HookrelayClient secrets", () => {
  test("neither the ingest secret nor the admin token shows in inspect, JSON, String or an error", async () => {
    const { fetch } = scripted(refused(401, "invalid_signature"), refused(401, "unauthorized"));
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", ingestSecret: SECRET, adminToken: TOKEN, fetch });
    const shown = [inspect(client, { showHidden: true, depth: 10 }), JSON.stringify(client), String(client)];
    for (const promise of [client.trackUsage(event), client.health()]) {
      await promise.catch((error: HookrelayError) => shown.push(inspect(error, { depth: 10 }), String(error), JSON.stringify(error)));
    }
    assert.equal(shown.length, 9);
    for (const text of shown) {
      assert.ok(!text.includes(SECRET) && !text.includes(TOKEN), `a secret shows in: ${text}`);
    }
  });

  test("the admin token goes to management calls only", async () => {
    const { calls, fetch } = scripted(json(200, { status: "healthy" }), accepted());
    const client = new HookrelayClient({ baseUrl: "http://hookrelay.test", adminToken: TOKEN, fetch });
    assert.deepEqual(await client.health(), { status: "healthy" });
    await client.trackUsage(event);
    assert.equal(calls[0]!.headers.authorization, `Bearer ${TOKEN}`);
    assert.equal(calls[1]!.headers.authorization, undefined);
  });
});

test("parseRetryAfter reads seconds and HTTP dates", () => {
  const now = Date.parse("2030-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("7", now), 7);
  assert.equal(parseRetryAfter(" 0 ", now), 0);
  assert.equal(parseRetryAfter("Tue, 01 Jan 2030 00:00:05 GMT", now), 5);
  assert.equal(parseRetryAfter("Mon, 31 Dec 2029 23:00:00 GMT", now), 0);
  assert.equal(parseRetryAfter("soon", now), undefined);
  assert.equal(parseRetryAfter(null, now), undefined);
});
