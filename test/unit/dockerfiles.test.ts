// The Dockerfiles copy folders, not an import graph: check statically that everything the
// entrypoint imports is in the image (its folder is COPYed and not .dockerignored) and that every
// package it imports is a production dependency (`npm ci --omit=dev` leaves devDependencies out).
// The e2e test builds and runs the images; this one says which import broke them, in milliseconds.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";

const root = join(import.meta.dirname, "..", "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };

/** Module specifiers a file imports at run time (type-only imports are erased by type stripping). */
export function runtimeImports(source: string): string[] {
  const text = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const out: string[] = [];
  const re = /\b(import|export)\s+(type\s+)?([^"'`;]*?)\s*from\s*["']([^"']+)["']|\bimport\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']\s*\)/g;
  for (const m of text.matchAll(re)) {
    if (m[5] || m[6]) { out.push((m[5] ?? m[6])!); continue; }
    if (m[2]) continue; // import type / export type
    out.push(m[4]!);
  }
  return out;
}

function packageName(spec: string): string {
  const parts = spec.split("/");
  return spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

/** Every project file reachable from entry, and every package named. */
function closure(entry: string): { files: string[]; packages: Set<string>; missing: string[] } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const missing: string[] = [];
  const visit = (file: string) => {
    if (files.has(file)) return;
    files.add(file);
    for (const spec of runtimeImports(readFileSync(file, "utf8"))) {
      if (spec.startsWith(".")) {
        const target = resolve(dirname(file), spec);
        if (!existsSync(target)) missing.push(`${relative(root, file)} imports ${spec}`);
        else if (/\.(ts|js|mjs|json)$/.test(target)) visit(target);
      } else if (!spec.startsWith("node:") && !builtinModules.includes(spec)) {
        packages.add(packageName(spec));
      }
    }
  };
  visit(entry);
  return { files: [...files].map((f) => relative(root, f)).sort(), packages, missing };
}

/** Folders the final stage copies from the context (`COPY <dir> ./<dir>`). */
function copiedDirs(dockerfile: string): string[] {
  const stages = readFileSync(dockerfile, "utf8").split(/^FROM\s/m);
  const final = stages[stages.length - 1]!;
  return [...final.matchAll(/^COPY\s+(?!--from)(\S+)\s+\S+\s*$/gm)].map((m) => m[1]!.replace(/\/$/, ""));
}

/** The .dockerignore is an allowlist (`*`, then `!dir/`) plus excluded patterns after it. */
function dockerignoreAllows(path: string): boolean {
  const lines = readFileSync(join(root, ".dockerignore"), "utf8").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  let included = true;
  for (const l of lines) {
    const neg = l.startsWith("!");
    const pat = neg ? l.slice(1) : l;
    const re = new RegExp("^" + pat.replace(/\/$/, "").replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*\*\//g, "(.*/)?").replace(/\*/g, "[^/]*") + "(/.*)?$");
    if (re.test(path)) included = neg;
  }
  return included;
}

for (const kind of ["relay", "operator"] as const) {
  describe(`${kind}/Dockerfile`, () => {
    const entry = join(root, kind, "main.ts");
    it(`copies everything ${kind}/main.ts imports, and its packages are production dependencies`, { skip: existsSync(entry) ? false : `${kind}/main.ts does not exist yet` }, () => {
      const { files, packages, missing } = closure(entry);
      assert.deepEqual(missing, [], "imports of files that do not exist");
      const dirs = copiedDirs(join(root, kind, "Dockerfile"));
      const notCopied = files.filter((f) => !dirs.some((d) => f === d || f.startsWith(`${d}/`)));
      assert.deepEqual(notCopied, [], `${kind}/Dockerfile does not COPY these (it copies ${dirs.join(", ")})`);
      const ignored = files.filter((f) => !dockerignoreAllows(f));
      assert.deepEqual(ignored, [], ".dockerignore keeps these out of the build context");
      const dev = [...packages].filter((p) => !pkg.dependencies[p]);
      assert.deepEqual(dev, [], `imported by the ${kind} but not in "dependencies" (npm ci --omit=dev will not install them)`);
      assert.ok(!files.some((f) => f.startsWith("test/")), `${kind} imports test code: ${files.filter((f) => f.startsWith("test/")).join(", ")}`);
    });

    it("uses NODE_IMAGE for every stage, a numeric non-root user, a health check and production dependencies only", () => {
      const text = readFileSync(join(root, kind, "Dockerfile"), "utf8");
      assert.match(text, /^ARG NODE_IMAGE=node:24-slim$/m);
      const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
      assert.ok(froms.length >= 2, "multi-stage");
      assert.ok(froms.every((f) => f === "${NODE_IMAGE}"), `every FROM is \${NODE_IMAGE}: ${froms.join(", ")}`);
      assert.match(text, /^USER\s+[1-9]\d*:[1-9]\d*$/m);
      assert.match(text, /^HEALTHCHECK\s/m);
      assert.match(text, /\/healthz/);
      assert.match(text, /npm ci --omit=dev/);
      assert.match(text, new RegExp(`^ENTRYPOINT \\["node", "${kind}/main.ts"\\]$`, "m"));
    });
  });
}

describe(".dockerignore", () => {
  it("keeps local state, dependencies and tests out of the build context", () => {
    for (const p of ["node_modules/zod/package.json", ".git/HEAD", ".local/x", "test/e2e/images.test.ts", "charts/mailfleet/Chart.yaml", "relay/x.test.ts"]) {
      assert.equal(dockerignoreAllows(p), false, p);
    }
    for (const p of ["package.json", "package-lock.json", "api/plan.ts", "relay/main.ts", "operator/main.ts"]) {
      assert.equal(dockerignoreAllows(p), true, p);
    }
  });
});
