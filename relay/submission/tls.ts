// The submission certificate (MAILFLEET_TLS_DIR/tls.crt and tls.key, a mounted kubernetes.io/tls
// Secret), re-read when the files change: the kubelet swaps the Secret's `..data` symlink in place
// when cert-manager renews it, which a directory watch sees; a stat every 30 s covers file systems
// without inotify. A pair that does not load keeps the previous one in use.
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, statSync, watch, type FSWatcher } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../runtime/logger.ts";

export interface CertPair {
  key: Buffer;
  cert: Buffer;
}

export class CertWatcher {
  readonly #dir: string;
  readonly #log: Logger;
  readonly #onChange: (pair: CertPair) => void;
  #stamp = "";
  #warned = false;
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;

  constructor(dir: string, log: Logger, onChange: (pair: CertPair) => void) {
    this.#dir = dir;
    this.#log = log;
    this.#onChange = onChange;
  }

  /** Loads the pair now; undefined when the files are missing or unusable. */
  load(): CertPair | undefined {
    const certFile = join(this.#dir, "tls.crt");
    const keyFile = join(this.#dir, "tls.key");
    try {
      const a = statSync(certFile);
      const b = statSync(keyFile);
      const stamp = `${a.mtimeMs}/${a.size}/${b.mtimeMs}/${b.size}/${a.ino}/${b.ino}`;
      if (stamp === this.#stamp) return undefined;
      const cert = readFileSync(certFile);
      const key = readFileSync(keyFile);
      // Validate before use: a half-written renewal must not replace a good pair.
      const x = new X509Certificate(cert);
      if (!x.checkPrivateKey(createPrivateKey(key))) throw new Error("tls.key does not match tls.crt");
      this.#stamp = stamp;
      this.#warned = false;
      this.#log.info("submission certificate loaded", { subject: x.subject.replace(/\n/g, ", "), validTo: x.validTo });
      return { key, cert };
    } catch (e) {
      // Once per state change, not on every 30 s check.
      if (this.#warned) return undefined;
      this.#warned = true;
      this.#log.warn("submission certificate not loaded", { dir: this.#dir, error: (e as NodeJS.ErrnoException).code ?? (e as Error).message });
      return undefined;
    }
  }

  start(): void {
    const check = () => {
      const pair = this.load();
      if (pair) this.#onChange(pair);
    };
    try {
      this.#watcher = watch(this.#dir, () => {
        clearTimeout(this.#debounce);
        this.#debounce = setTimeout(check, 200);
      });
      this.#watcher.on("error", () => { this.#watcher?.close(); this.#watcher = undefined; });
    } catch {
      // directory missing or no inotify: the timer below still works
    }
    this.#timer = setInterval(check, 30_000);
    this.#timer.unref();
  }

  stop(): void {
    this.#watcher?.close();
    clearInterval(this.#timer);
    clearTimeout(this.#debounce);
  }
}
