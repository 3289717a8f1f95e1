// Starts a real hookrelay (HOOKRELAY_BIN) and a receiver for its deliveries, per test file.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

export interface Delivery {
  headers: IncomingHttpHeaders;
  rawBody: Buffer;
}

/** Records every request hookrelay delivers to it and answers 200. */
export class Receiver {
  readonly deliveries: Delivery[] = [];
  #server: Server;

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(): Promise<Receiver> {
    const server = createServer();
    const receiver = new Receiver(server);
    server.on("request", (req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (chunk: Buffer) => chunks.push(chunk));
      req.on("end", () => {
        receiver.deliveries.push({ headers: req.headers, rawBody: Buffer.concat(chunks) });
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return receiver;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}/hook`;
  }

  /** The deliveries whose webhook-id (hookrelay's event id) is `eventId`. */
  deliveriesOf(eventId: string): Delivery[] {
    return this.deliveries.filter((d) => d.headers["webhook-id"] === eventId);
  }

  /** Waits until `eventId` has been delivered at least once. */
  async waitFor(eventId: string, timeoutMs = 15_000): Promise<Delivery> {
    await until(() => this.deliveriesOf(eventId).length > 0, timeoutMs, `delivery of ${eventId}`);
    return this.deliveriesOf(eventId)[0]!;
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** Polls `condition` every 20 ms until it holds, failing after `timeoutMs`. */
export async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export function hookrelayBin(): string {
  const bin = process.env.HOOKRELAY_BIN;
  if (!bin) {
    throw new Error(
      "HOOKRELAY_BIN is not set: these tests run against a real hookrelay; set it to the binary, e.g. HOOKRELAY_BIN=target/release/hookrelay npm test",
    );
  }
  return bin;
}

export interface Hookrelay {
  url: string;
  ingestSecret: string;
  adminToken: string;
  webhookSecret: string;
  stop(): Promise<void>;
}

const random = () => randomBytes(32).toString("hex");

/**
 * Starts `$HOOKRELAY_BIN serve` on a free port, in a fresh directory (no stray .env is read),
 * delivering to `receiverUrl`. Resolves once it prints the address it listens on.
 */
export async function startHookrelay(receiverUrl: string, extraEnv: Record<string, string> = {}): Promise<Hookrelay> {
  const bin = hookrelayBin();
  const dir = mkdtempSync(join(tmpdir(), "hookrelay-ts-"));
  const secrets = { ingestSecret: random(), adminToken: random(), webhookSecret: `whsec_${randomBytes(24).toString("base64")}` };
  const child: ChildProcess = spawn(bin, ["serve", "--listen", "127.0.0.1:0"], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
    // Only what is listed: a HOOKRELAY_* variable of the caller's must not change the test.
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOOKRELAY_DATA_DIR: join(dir, "data"),
      DATABASE_URL: `sqlite://${join(dir, "data", "hookrelay.db")}`,
      HOOKRELAY_INGEST_SECRET: secrets.ingestSecret,
      // Standard Webhooks only: proves the client does not lean on the replayable body-only scheme.
      HOOKRELAY_INGEST_ACCEPT_BODY_SIGNATURE: "false",
      HOOKRELAY_ADMIN_TOKEN: secrets.adminToken,
      WEBHOOK_SECRET: secrets.webhookSecret,
      WEBHOOK_RATE_LIMIT: "100000",
      WEBHOOK_RATE_WINDOW: "1",
      HOOKRELAY_ALLOW_PRIVATE_TARGETS: "true",
      ZAPIER_WEBHOOK_URL: receiverUrl,
      WEBHOOK_RETRY_DELAY_SECONDS: "1",
      LOG_LEVEL: "WARN",
      ...extraEnv,
    },
  });
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`hookrelay did not start within 20 s; stderr:\n${stderr}`)), 20_000);
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const match = /hookrelay listening on (http:\/\/\S+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`hookrelay exited (${code}) before listening; stderr:\n${stderr}`));
    });
  });

  return {
    url,
    ...secrets,
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        const killed = await Promise.race([exited.then(() => true), sleep(10_000, undefined, { ref: false }).then(() => false)]);
        if (!killed) {
          child.kill("SIGKILL");
          await exited;
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A usage event unique to one test, so deliveries and sessions can be told apart. */
export function usageEvent(overrides: Partial<import("../src/index.js").UsageEvent> = {}) {
  return {
    session_id: `session_${randomBytes(6).toString("hex")}`,
    query: "Why does this code throw an error?",
    model_name: "gpt-4o-mini",
    response_time_ms: 1000,
    estimated_tokens: 100,
    success: true,
    ...overrides,
  };
}
