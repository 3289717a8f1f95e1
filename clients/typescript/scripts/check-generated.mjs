// Fails when ../../openapi.json changed but src/generated/openapi.ts was not regenerated
// (`npm run generate`): the committed types would silently describe an older API.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const committed = join(root, "src/generated/openapi.ts");
const dir = mkdtempSync(join(tmpdir(), "hookrelay-openapi-"));
const fresh = join(dir, "openapi.ts");
try {
  execFileSync(
    join(root, "node_modules/.bin/openapi-typescript"),
    [join(root, "../../openapi.json"), "-o", fresh],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  if (readFileSync(fresh, "utf8") !== readFileSync(committed, "utf8")) {
    console.error("src/generated/openapi.ts is out of date with openapi.json: run `npm run generate` and commit it");
    try {
      execFileSync("diff", ["-u", committed, fresh], { stdio: "inherit" });
    } catch {
      // diff exits 1 when the files differ: that is the point, the message above says what to do.
    }
    process.exitCode = 1;
  } else {
    console.log("src/generated/openapi.ts matches openapi.json");
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
