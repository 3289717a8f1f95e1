// Signing and verifying without a server: against the published Standard Webhooks vector and
// against HMACs computed by openssl, so the client is not only checked against itself.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, test } from "node:test";

import { signingKey, signRequest, signStandard, verifyWebhook, WebhookVerificationError } from "../src/index.js";

/** base64 HMAC-SHA256 of `message` by openssl, with the key as text or as hex bytes. */
function opensslHmac(message: string, key: { text: string } | { hex: string }): string {
  const macopt = "text" in key ? `key:${key.text}` : `hexkey:${key.hex}`;
  const mac = execFileSync("openssl", ["dgst", "-sha256", "-mac", "HMAC", "-macopt", macopt, "-binary"], {
    input: message,
  });
  return execFileSync("openssl", ["base64", "-A"], { input: mac }).toString().trim();
}

describe("signing", () => {
  test("reproduces the Standard Webhooks published vector", () => {
    assert.equal(
      signStandard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'),
      "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    );
  });

  test("a plain secret is used as its UTF-8 bytes, as openssl -hmac does", () => {
    const secret = "plain-secret-ünïcode";
    const body = '{"session_id":"s","query":"héllo → world"}';
    const expected = opensslHmac(`msg_1.1700000000.${body}`, { text: secret });
    assert.equal(signStandard(secret, "msg_1", 1700000000, body), `v1,${expected}`);
    // The same bytes given as a Buffer sign the same.
    assert.equal(signStandard(secret, "msg_1", 1700000000, Buffer.from(body)), `v1,${expected}`);
  });

  test("a whsec_ secret is base64-decoded", () => {
    const keyHex = "00ff10e7a5c3" + "42".repeat(26);
    const secret = `whsec_${Buffer.from(keyHex, "hex").toString("base64")}`;
    const expected = opensslHmac("msg_2.1700000001.{}", { hex: keyHex });
    assert.equal(signStandard(secret, "msg_2", 1700000001, "{}"), `v1,${expected}`);
  });

  test("a mangled whsec_ secret is refused without being echoed", () => {
    const secret = "whsec_not*base64!TOPSECRET";
    assert.throws(
      () => signingKey(secret),
      (error: Error) => error instanceof TypeError && !error.message.includes("TOPSECRET"),
    );
    assert.throws(() => signingKey(""), TypeError);
    assert.throws(() => signingKey("whsec_"), TypeError);
  });

  test("signRequest uses a new message id every time, and the current time", () => {
    const now = new Date("2030-01-01T00:00:00Z");
    const a = signRequest("secret", "{}", now);
    const b = signRequest("secret", "{}", now);
    assert.notEqual(a["webhook-id"], b["webhook-id"]);
    assert.match(a["webhook-id"], /^msg_[0-9a-f]{32}$/);
    assert.equal(a["webhook-timestamp"], String(now.getTime() / 1000));
    assert.equal(a["webhook-signature"], signStandard("secret", a["webhook-id"], now.getTime() / 1000, "{}"));
  });
});

describe("verifyWebhook", () => {
  const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  const body = '{"event_id":"evt_1","event_type":"usage.tracked"}';
  const ts = 1700000000;
  const now = new Date(ts * 1000);
  const good = signStandard(secret, "evt_1", ts, body);
  const headers = { "Webhook-Id": "evt_1", "WEBHOOK-TIMESTAMP": String(ts), "webhook-signature": good };

  const reason = (expected: string) => (error: unknown) =>
    error instanceof WebhookVerificationError && error.reason === expected;

  test("accepts plain-object headers in any case, and a Headers instance", () => {
    assert.deepEqual(verifyWebhook(secret, headers, body, { now }), JSON.parse(body));
    assert.deepEqual(verifyWebhook(secret, new Headers(headers), Buffer.from(body), { now }), JSON.parse(body));
  });

  test("accepts any one of several signatures (a rotation), whatever their order", () => {
    const other = signStandard("whsec_aGVsbG8=", "evt_1", ts, body);
    for (const signatures of [`${other} ${good}`, `v1a,xyz ${good}`, `${good} v1,AAAA`]) {
      assert.ok(verifyWebhook(secret, { ...headers, "webhook-signature": signatures }, body, { now }));
    }
  });

  test("refuses a changed body, id or timestamp, or another secret", () => {
    assert.throws(() => verifyWebhook(secret, headers, body.replace("evt_1", "evt_2"), { now }), reason("no_matching_signature"));
    assert.throws(() => verifyWebhook(secret, { ...headers, "Webhook-Id": "evt_2" }, body, { now }), reason("no_matching_signature"));
    assert.throws(
      () => verifyWebhook(secret, { ...headers, "WEBHOOK-TIMESTAMP": String(ts + 1) }, body, { now }),
      reason("no_matching_signature"),
    );
    assert.throws(() => verifyWebhook("whsec_aGVsbG8=", headers, body, { now }), reason("no_matching_signature"));
    assert.throws(() => verifyWebhook(secret, { ...headers, "webhook-signature": "v2,abc" }, body, { now }), reason("no_matching_signature"));
  });

  test("refuses timestamps beyond the tolerance, either way", () => {
    const at = (seconds: number) => new Date((ts + seconds) * 1000);
    assert.ok(verifyWebhook(secret, headers, body, { now: at(300) }));
    assert.ok(verifyWebhook(secret, headers, body, { now: at(-300) }));
    assert.throws(() => verifyWebhook(secret, headers, body, { now: at(301) }), reason("timestamp_out_of_tolerance"));
    assert.throws(() => verifyWebhook(secret, headers, body, { now: at(-301) }), reason("timestamp_out_of_tolerance"));
    assert.ok(verifyWebhook(secret, headers, body, { now: at(3600), toleranceSeconds: 3600 }));
  });

  test("refuses missing or malformed headers and a body that is not JSON", () => {
    const { "Webhook-Id": _, ...noId } = headers;
    assert.throws(() => verifyWebhook(secret, noId, body, { now }), reason("missing_header"));
    assert.throws(() => verifyWebhook(secret, { ...headers, "webhook-signature": "" }, body, { now }), reason("missing_header"));
    assert.throws(() => verifyWebhook(secret, { ...headers, "WEBHOOK-TIMESTAMP": "1e9" }, body, { now }), reason("malformed_header"));
    const text = "not json";
    const signed = { ...headers, "webhook-signature": signStandard(secret, "evt_1", ts, text) };
    assert.throws(() => verifyWebhook(secret, signed, text, { now }), reason("invalid_payload"));
    // A JavaScript caller handing over the parsed body gets told, not a confusing mismatch.
    assert.throws(() => verifyWebhook(secret, headers, JSON.parse(body) as string, { now }), TypeError);
  });
});
