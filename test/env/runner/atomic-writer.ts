// The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go), so that a relay sees Secret and
// ConfigMap volumes change exactly as it would on a node:
//
//   <dir>/..2026_11_28_00_00_00.123456789/<files>   the payload, one folder per version
//   <dir>/..data -> ..2026_11_28_...                 swapped with one rename(2): readers see the
//                                                    old or the new version, never a mix
//   <dir>/<key> -> ..data/<key>                      what the container opens
//
// An unchanged payload writes nothing (no new version, no swap). No library does this.
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { VolumeFile } from "./pod.ts";

const DATA = "..data";
const DATA_TMP = "..data_tmp";

function timestampPrefix(d = new Date()): string {
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  return `..${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}_${p(d.getUTCHours())}_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}.`;
}

function listFiles(root: string, rel = ""): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...listFiles(root, p));
    else out.push(p);
  }
  return out;
}

/** The version folder ..data points at, if any. */
export function currentVersion(dir: string): string | undefined {
  try {
    return readlinkSync(join(dir, DATA));
  } catch {
    return undefined;
  }
}

function samePayload(dir: string, version: string, payload: Map<string, VolumeFile>, gid: number | undefined): boolean {
  const root = join(dir, version);
  let present: string[];
  try {
    present = listFiles(root);
  } catch {
    return false;
  }
  if (present.length !== payload.size) return false;
  for (const p of present) {
    const want = payload.get(p);
    if (!want) return false;
    const file = join(root, p);
    const st = statSync(file);
    if ((st.mode & 0o7777) !== effectiveMode(want.mode, gid)) return false;
    if (gid !== undefined && st.gid !== gid) return false;
    if (!readFileSync(file).equals(want.data)) return false;
  }
  // The user-visible links must be there too (a crash between steps can leave them out).
  for (const top of topLevel(payload)) if (!existsLink(join(dir, top))) return false;
  return true;
}

function existsLink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

function topLevel(payload: Map<string, VolumeFile>): Set<string> {
  return new Set([...payload.keys()].map((p) => p.split("/")[0]!));
}

/** With an fsGroup the kubelet makes files group-readable by it (SetVolumeOwnership, read-only mask). */
function effectiveMode(mode: number, gid: number | undefined): number {
  return gid === undefined ? mode & 0o7777 : (mode | 0o440) & 0o7777;
}

/**
 * Makes dir hold exactly payload (paths relative to dir), swapping versions atomically. With gid
 * (the Pod's fsGroup) files and folders are group-owned by it, as the kubelet does. Returns whether
 * anything changed.
 */
export function writeAtomic(dir: string, payload: Map<string, VolumeFile>, o: { gid?: number } = {}): boolean {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const old = currentVersion(dir);
  if (old && samePayload(dir, old, payload, o.gid)) return false;

  const version = mkdtempSync(join(dir, timestampPrefix())).slice(dir.length + 1);
  const root = join(dir, version);
  chmodSync(root, 0o755);
  for (const [p, f] of payload) {
    const file = join(root, p);
    mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
    writeFileSync(file, f.data, { mode: 0o600 });
    chmodSync(file, effectiveMode(f.mode, o.gid)); // writeFileSync's mode is filtered by the umask
  }
  if (o.gid !== undefined) {
    const own = (rel: string) => {
      const p = join(root, rel);
      chownSync(p, statSync(p).uid, o.gid!);
      if (statSync(p).isDirectory()) {
        chmodSync(p, (statSync(p).mode & 0o7777) | 0o2000 | 0o110);
        for (const e of readdirSync(p)) own(rel ? `${rel}/${e}` : e);
      }
    };
    own("");
  }

  // The swap: a new link under a temporary name, renamed over ..data in one step.
  const tmp = join(dir, DATA_TMP);
  rmSync(tmp, { force: true });
  symlinkSync(version, tmp);
  renameSync(tmp, join(dir, DATA));

  // User-visible links for new top-level names; links for names no longer in the payload go.
  const want = topLevel(payload);
  for (const top of want) {
    const link = join(dir, top);
    if (!existsLink(link)) symlinkSync(join(DATA, top), link);
  }
  for (const e of readdirSync(dir)) {
    if (e.startsWith("..")) {
      if (e !== DATA && e !== version) rmSync(join(dir, e), { recursive: true, force: true }); // the old version
      continue;
    }
    if (!want.has(e) && existsLink(join(dir, e))) unlinkSync(join(dir, e));
  }
  return true;
}
