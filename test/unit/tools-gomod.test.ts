// The Kubernetes wrapper go.mod is derived from k8s.io/kubernetes's own go.mod, never hard-coded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { kubernetesWrapperGoMod } from "../env/tools.ts";

const staging = ["api", "apimachinery", "apiserver", "client-go", "component-base", "cri-streaming", "kubelet", "streaming", "sample-apiserver", "kms"];
const upstream = [
  "module k8s.io/kubernetes",
  "",
  "go 1.26.0",
  "",
  "godebug default=go1.26",
  "",
  "require (",
  "\tgithub.com/google/go-cmp v0.7.0",
  ...staging.slice(0, -1).map((m) => `\tk8s.io/${m} v0.0.0`),
  "\tk8s.io/kube-openapi v0.0.0-20260317180543-43fb72c5454a",
  "\tk8s.io/utils v0.0.0-20260210185600-b8788abfbbc2",
  ")",
  "",
  "require k8s.io/kms v0.0.0 // indirect",
  "",
  "replace (",
  ...staging.map((m) => `\tk8s.io/${m} => ./staging/src/k8s.io/${m}`),
  "\tk8s.io/sample-controller => ./staging/src/k8s.io/sample-controller",
  ")",
].join("\n");

test("every staging module is pinned to v0.<minor>.<patch>; pseudo-versions are left alone", () => {
  const out = kubernetesWrapperGoMod(upstream, "v1.36.3");
  assert.match(out, /^require k8s\.io\/kubernetes v1\.36\.3$/m);
  assert.match(out, /^godebug default=go1\.26$/m);
  assert.match(out, /^go 1\.26\.0$/m);
  for (const m of [...staging, "sample-controller"]) {
    assert.match(out, new RegExp(`^\\tk8s\\.io/${m} => k8s\\.io/${m} v0\\.36\\.3$`, "m"), m);
  }
  assert.doesNotMatch(out, /kube-openapi|k8s\.io\/utils|go-cmp/);
});

test("a go.mod without staging modules is refused", () => {
  assert.throws(() => kubernetesWrapperGoMod("module x\n\ngo 1.26\n", "v1.36.3"), /staging modules/);
});
