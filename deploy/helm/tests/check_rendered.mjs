// Renders deploy/helm/broker-client and deploy/helm/broker-server with a
// real helm for each scenario below, validates every object against the
// Kubernetes API schemas (the npm package kubernetes-models, plus a strict
// unknown-field check and the API server's own name/reference rules), and
// asserts the facts High Availability depends on. Run by
// scripts/check_charts.sh:
//   node check_rendered.mjs <helm> <tools dir with node_modules> <deploy/helm>
// Prints each check; exits 1 when any fails.

import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import fs from "node:fs";

const [helm, toolsDir, chartsDir] = process.argv.slice(2);
if (!helm || !toolsDir || !chartsDir) {
  console.error("usage: check_rendered.mjs <helm> <tools dir> <charts dir>");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(toolsDir), "node_modules", "_.js"));
const YAML = require("yaml");
const schemaDir = path.join(path.resolve(toolsDir), "node_modules", "kubernetes-models", "_schemas");

let passed = 0;
let failed = 0;
function check(ok, what, detail) {
  if (ok) {
    passed++;
    console.log(`  ok    ${what}`);
  } else {
    failed++;
    console.log(`  FAIL  ${what}${detail === undefined ? "" : `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`}`);
  }
  return ok;
}

// ---------------------------------------------------------------- helm

function helmTemplate(chart, release, namespace, args) {
  const chartDir = path.join(chartsDir, chart);
  const argv = ["template", release, chartDir, "--namespace", namespace,
    "-f", path.join(chartDir, "ci", "default-values.yaml"), ...args];
  const r = spawnSync(helm, argv, { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout || "", stderr: r.stderr || "" };
}

function parseManifests(text, label) {
  const docs = YAML.parseAllDocuments(text, { uniqueKeys: true, strict: true });
  const objects = [];
  let clean = true;
  for (const doc of docs) {
    if (doc.errors.length || doc.warnings.length) {
      clean = false;
      check(false, `${label}: YAML parses cleanly`, [...doc.errors, ...doc.warnings].map((e) => e.message).join("; "));
      continue;
    }
    const obj = doc.toJS();
    if (obj !== null && obj !== undefined) objects.push(obj);
  }
  if (clean) check(true, `${label}: ${objects.length} objects, YAML parses cleanly (no duplicate keys)`);
  return objects;
}

// ---------------------------------------------------- schema validation

const validators = new Map();
async function validatorFor(obj) {
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const groupName = group === "" ? "Core" : cap(group.split(".")[0]);
  const name = `IoK8sApi${groupName}${cap(version)}${obj.kind}`;
  if (!validators.has(name)) {
    const file = path.join(schemaDir, `${name}.js`);
    validators.set(name, fs.existsSync(file) ? (await import(pathToFileURL(file).href)).validate : null);
  }
  return { name, validate: validators.get(name) };
}

// Wraps the object so that every property the compiled schema looks at is
// recorded: a key it never reads is not in the schema (kubectl --validate=strict
// would refuse it). Objects whose keys the schema enumerates (maps such as
// labels, data, resources) count as fully known.
function tracked(value, where, records) {
  if (value === null || typeof value !== "object") return value;
  const rec = { where, value, read: new Set(), enumerated: Array.isArray(value) };
  records.push(rec);
  const children = new Map();
  return new Proxy(value, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== "string") return v;
      rec.read.add(key);
      if (v !== null && typeof v === "object" && Object.prototype.hasOwnProperty.call(target, key)) {
        if (!children.has(key)) children.set(key, tracked(v, `${where}/${key}`, records));
        return children.get(key);
      }
      return v;
    },
    has(target, key) {
      if (typeof key === "string") rec.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      rec.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

async function validateObject(obj, label) {
  const id = `${label}: ${obj.kind}/${obj.metadata?.name}`;
  const { name, validate } = await validatorFor(obj);
  if (!check(validate !== null, `${id} has a Kubernetes schema (${name})`)) return;
  const records = [];
  const ok = validate(tracked(obj, "", records));
  const errors = (validate.errors || []).map((e) => `${e.instancePath} ${e.message}`);
  const unknown = [];
  for (const rec of records) {
    if (rec.enumerated) continue;
    for (const key of Object.keys(rec.value)) {
      if (!rec.read.has(key)) unknown.push(`${rec.where}/${key}`);
    }
  }
  check(ok && unknown.length === 0, `${id} is valid against ${name}`,
    [...errors, ...unknown.map((u) => `unknown field ${u}`)].join("; "));
}

// --------------------------------------------- API server's own rules

const dns1123Label = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const dns1123Subdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const ianaSvcName = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const envName = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;
const labelValue = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

const workloadKinds = new Set(["Deployment", "StatefulSet"]);
const podSpecOf = (o) => o.spec.template.spec;
const podLabelsOf = (o) => o.spec.template.metadata.labels || {};
const matches = (selector, labels) => Object.entries(selector || {}).every(([k, v]) => labels[k] === v);

function apiRules(objects, label, existing) {
  const byKind = (kind) => objects.filter((o) => o.kind === kind);
  const names = new Set(objects.map((o) => `${o.kind}/${o.metadata.name}`));
  const has = (kind, name) => names.has(`${kind}/${name}`) || existing.includes(`${kind}/${name}`);
  let problems = [];
  for (const o of objects) {
    const n = o.metadata.name;
    const max = o.kind === "Service" ? 63 : workloadKinds.has(o.kind) ? 52 : 253;
    const re = o.kind === "Service" ? /^[a-z]([-a-z0-9]*[a-z0-9])?$/ : dns1123Subdomain;
    if (!re.test(n) || n.length > max) problems.push(`${o.kind} name ${n} (max ${max})`);
    for (const labels of [o.metadata.labels || {}, workloadKinds.has(o.kind) ? podLabelsOf(o) : {}]) {
      for (const [k, v] of Object.entries(labels)) {
        if (typeof v !== "string" || v.length > 63 || !labelValue.test(v)) problems.push(`${n}: label ${k}=${v}`);
      }
    }
  }
  check(problems.length === 0, `${label}: object names and label values are valid`, problems.join("; "));

  problems = [];
  for (const w of objects.filter((o) => workloadKinds.has(o.kind))) {
    const spec = podSpecOf(w);
    const volumes = new Set((spec.volumes || []).map((v) => v.name));
    if (w.kind === "StatefulSet") {
      for (const t of w.spec.volumeClaimTemplates || []) volumes.add(t.metadata.name);
    }
    if (!matches(w.spec.selector.matchLabels, podLabelsOf(w))) problems.push(`${w.metadata.name}: selector does not match its pod labels`);
    const containerNames = new Set();
    for (const c of [...(spec.initContainers || []), ...spec.containers]) {
      if (!dns1123Label.test(c.name) || containerNames.has(c.name)) problems.push(`${w.metadata.name}: container name ${c.name}`);
      containerNames.add(c.name);
      const portNames = new Set();
      for (const p of c.ports || []) {
        if (p.name !== undefined) {
          if (p.name.length > 15 || !ianaSvcName.test(p.name) || !/[a-z]/.test(p.name) || portNames.has(p.name)) problems.push(`${c.name}: port name ${p.name}`);
          portNames.add(p.name);
        }
      }
      const defined = [];
      for (const e of c.env || []) {
        if (!envName.test(e.name) || defined.includes(e.name)) problems.push(`${c.name}: env ${e.name} invalid or repeated`);
        // $(VAR) only expands variables defined earlier in the same list.
        for (const m of String(e.value ?? "").matchAll(/\$\(([^)]+)\)/g)) {
          if (!defined.includes(m[1])) problems.push(`${c.name}: env ${e.name} uses $(${m[1]}) before it is defined`);
        }
        defined.push(e.name);
        const sk = e.valueFrom?.secretKeyRef;
        if (sk && !has("Secret", sk.name)) problems.push(`${c.name}: env ${e.name} reads missing Secret ${sk.name}`);
      }
      for (const arg of [...(c.args || []), ...(c.command || [])]) {
        for (const m of String(arg).matchAll(/\$\(([^)]+)\)/g)) {
          if (!defined.includes(m[1])) problems.push(`${c.name}: argument uses undefined $(${m[1]})`);
        }
      }
      for (const m of c.volumeMounts || []) {
        if (!volumes.has(m.name)) problems.push(`${c.name}: mount of missing volume ${m.name}`);
      }
      for (const probe of ["readinessProbe", "livenessProbe", "startupProbe"]) {
        const port = c[probe]?.httpGet?.port ?? c[probe]?.tcpSocket?.port;
        if (typeof port === "string" && !portNames.has(port)) problems.push(`${c.name}: ${probe} on unknown port ${port}`);
      }
    }
    for (const v of spec.volumes || []) {
      if (v.configMap && !has("ConfigMap", v.configMap.name)) problems.push(`${w.metadata.name}: volume ${v.name} from missing ConfigMap ${v.configMap.name}`);
      if (v.secret && !has("Secret", v.secret.secretName)) problems.push(`${w.metadata.name}: volume ${v.name} from missing Secret ${v.secret.secretName}`);
    }
    const sa = spec.serviceAccountName;
    if (sa && !has("ServiceAccount", sa)) problems.push(`${w.metadata.name}: missing ServiceAccount ${sa}`);
    if (w.kind === "StatefulSet") {
      const svc = byKind("Service").find((s) => s.metadata.name === w.spec.serviceName);
      if (!svc) problems.push(`${w.metadata.name}: serviceName ${w.spec.serviceName} is not rendered`);
    }
  }
  for (const s of byKind("Service")) {
    const selected = objects.filter((o) => workloadKinds.has(o.kind) && matches(s.spec.selector, podLabelsOf(o)));
    if (selected.length !== 1) {
      problems.push(`Service ${s.metadata.name} selects ${selected.length} workloads`);
      continue;
    }
    const ports = new Set(podSpecOf(selected[0]).containers.flatMap((c) => (c.ports || []).map((p) => p.name)));
    for (const p of s.spec.ports) {
      if (typeof p.targetPort === "string" && !ports.has(p.targetPort)) problems.push(`Service ${s.metadata.name}: targetPort ${p.targetPort} is no container port`);
    }
  }
  for (const p of byKind("PodDisruptionBudget")) {
    const selected = objects.filter((o) => workloadKinds.has(o.kind) && matches(p.spec.selector.matchLabels, podLabelsOf(o)));
    if (selected.length !== 1) problems.push(`PDB ${p.metadata.name} selects ${selected.length} workloads`);
  }
  for (const np of byKind("NetworkPolicy")) {
    const selected = objects.filter((o) => workloadKinds.has(o.kind) && matches(np.spec.podSelector.matchLabels, podLabelsOf(o)));
    if (selected.length !== 1) problems.push(`NetworkPolicy ${np.metadata.name} selects ${selected.length} workloads`);
  }
  check(problems.length === 0, `${label}: selectors, ports, env, volumes and references resolve`, problems.join("; "));
}

// ------------------------------------------------------------- helpers

const find = (objects, kind, name) => objects.find((o) => o.kind === kind && o.metadata.name === name);
const container = (w, name) => w && podSpecOf(w).containers.find((c) => c.name === name);
const envOf = (c) => Object.fromEntries((c?.env || []).map((e) => [e.name, e.value ?? e.valueFrom]));
const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function render(chart, release, namespace, label, args, existing = []) {
  console.log(`\n== ${chart}: ${label}\n   helm template ${release} ${chart} -n ${namespace} ${args.join(" ")}`);
  const r = helmTemplate(chart, release, namespace, args);
  if (!check(r.status === 0, `${label}: helm template succeeds`, r.stderr.trim())) return null;
  const objects = parseManifests(r.stdout, label);
  for (const o of objects) await validateObject(o, label);
  apiRules(objects, label, existing);
  return objects;
}

function rejects(chart, release, namespace, label, args, messages) {
  console.log(`\n== ${chart}: ${label} is refused\n   helm template ${release} ${chart} -n ${namespace} ${args.join(" ")}`);
  const r = helmTemplate(chart, release, namespace, args);
  check(r.status !== 0, `${label}: helm exits non-zero (status ${r.status})`);
  for (const line of r.stderr.trim().split("\n").filter((l) => l && !l.startsWith("Use --debug"))) console.log(`        | ${line}`);
  for (const m of messages) check(r.stderr.includes(m), `${label}: the error says "${m}"`, r.stderr.trim());
}

// -------------------------------------------------------- broker-client

const CNS = "broker";
const CREL = "broker-client";
const TOKEN = "00000000-0000-4000-8000-000000000000";  // ci/default-values.yaml
const tunnelName = `${CREL}-tunnel`;
const egressName = `${CREL}-tunnel-egress`;
const webhookName = `${CREL}-webhook`;
const dispatcherUrl = "https://dispatcher.ha.example.test";

function clientCommon(objects, label, { replicas, ha }) {
  const tunnel = find(objects, "Deployment", tunnelName);
  if (!check(tunnel, `${label}: Deployment ${tunnelName} is rendered`)) return;
  check(objects.filter((o) => workloadKinds.has(o.kind) && o.metadata.labels["app.kubernetes.io/component"] === "tunnel").length === 1,
    `${label}: one workload (one pod template) for every tunnel replica`);
  check(tunnel.spec.replicas === replicas, `${label}: tunnel replicas = ${replicas}`, tunnel.spec.replicas);
  const names = podSpecOf(tunnel).containers.map((c) => c.name);
  check(eq(names, ["tunnel", "ha-agent"]), `${label}: tunnel pod runs containers tunnel and ha-agent (sidecar)`, names);
  const t = envOf(container(tunnel, "tunnel"));
  const a = envOf(container(tunnel, "ha-agent"));
  const haValue = ha ? "true" : "false";
  check(t.BROKER_HA_MODE_ENABLED === haValue && a.BROKER_HA_MODE_ENABLED === haValue,
    `${label}: BROKER_HA_MODE_ENABLED=${haValue} on tunnel and ha-agent`, [t.BROKER_HA_MODE_ENABLED, a.BROKER_HA_MODE_ENABLED]);
  if (!ha) {
    const anyTrue = objects.some((o) => workloadKinds.has(o.kind) && podSpecOf(o).containers.some((c) => envOf(c).BROKER_HA_MODE_ENABLED === "true"));
    check(!anyTrue, `${label}: no container has BROKER_HA_MODE_ENABLED=true`);
  }
  check(t.BROKER_HA_AGENT_ADDR === "127.0.0.1:7343", `${label}: the worker reaches the agent at 127.0.0.1:7343`, t.BROKER_HA_AGENT_ADDR);
  check(a.BROKER_HA_AGENT_ADDRESS === "127.0.0.1" && a.BROKER_HA_AGENT_PORT === "7343", `${label}: the agent listens on 127.0.0.1:7343 only`);
  for (const v of ["BROKER_TOKEN", "BROKER_HA_MODE_ENABLED", "BROKER_DISPATCHER_BASE_URL", "BROKER_SERVER_URL", "BROKER_CLIENT_URL", "ACCEPT"]) {
    check(a[v] !== undefined && a[v] !== "", `${label}: ha-agent gets ${v}`);
  }
  check(t.PORT === "8000" && t.BROKER_TUNNEL_EGRESS_PORT === "7344", `${label}: worker PORT=8000, BROKER_TUNNEL_EGRESS_PORT=7344`, [t.PORT, t.BROKER_TUNNEL_EGRESS_PORT]);
  // Every replica gets the same parameters, and so do its two containers.
  for (const v of ["BROKER_TOKEN", "BROKER_SERVER_URL", "BROKER_CLIENT_URL", "ACCEPT", "CA_CERT", "LOG_LEVEL"]) {
    check(eq(t[v], a[v]), `${label}: tunnel and ha-agent share ${v}`, [t[v], a[v]]);
  }
  const perPod = podSpecOf(tunnel).containers.flatMap((c) => (c.env || []).filter((e) => e.valueFrom?.fieldRef || e.valueFrom?.resourceFieldRef).map((e) => `${c.name}:${e.name}`));
  check(perPod.length === 0, `${label}: no per-pod values in the worker env (identical on every replica)`, perPod);
  const literal = JSON.stringify(podSpecOf(tunnel)).includes(TOKEN);
  check(!literal && t.BROKER_TOKEN?.secretKeyRef, `${label}: the token comes from a Secret, never a literal`);
  const rp = container(tunnel, "tunnel").readinessProbe;
  const lp = container(tunnel, "tunnel").livenessProbe;
  check(rp?.httpGet?.path === "/healthcheck" && rp.httpGet.port === "http", `${label}: worker readiness is GET /healthcheck on 8000`, rp);
  check(lp?.tcpSocket && !lp.httpGet, `${label}: worker liveness is a TCP check (does not flap with the tunnel down)`, lp);
  check(podSpecOf(tunnel).terminationGracePeriodSeconds > 30, `${label}: worker grace period ${podSpecOf(tunnel).terminationGracePeriodSeconds}s > the 30 s drain`);
  check(tunnel.spec.strategy?.rollingUpdate?.maxSurge === 0, `${label}: tunnel rollout adds no surge pod (a 5th worker would wait for a slot)`);
  const aff = podSpecOf(tunnel).affinity?.podAntiAffinity;
  check(aff && podSpecOf(tunnel).topologySpreadConstraints?.length > 0, `${label}: tunnel pods have anti-affinity and a topology spread`);

  const egress = find(objects, "Service", egressName);
  if (check(egress, `${label}: headless Service ${egressName} is rendered`)) {
    check(egress.spec.clusterIP === "None" && egress.spec.publishNotReadyAddresses === false,
      `${label}: ${egressName} is headless with publishNotReadyAddresses: false`);
    check(egress.spec.ports.length === 1 && egress.spec.ports[0].port === 7344, `${label}: ${egressName} serves port 7344`);
    check(matches(egress.spec.selector, podLabelsOf(tunnel)), `${label}: ${egressName} selects the tunnel pods`);
  }
  const webhook = find(objects, "Deployment", webhookName);
  if (check(webhook, `${label}: Deployment ${webhookName} is rendered`)) {
    const w = envOf(container(webhook, "webhook"));
    check(container(webhook, "webhook"), `${label}: webhook pod runs container webhook`);
    check(w.PORT === "8001", `${label}: webhook PORT=8001`);
    const target = `dns:///${egressName}.${CNS}.svc.cluster.local:7344`;
    check(w.BROKER_TUNNEL_EGRESS_TARGET === target, `${label}: BROKER_TUNNEL_EGRESS_TARGET=${target}`, w.BROKER_TUNNEL_EGRESS_TARGET);
    check(eq(w.ACCEPT, t.ACCEPT) && eq(w.BROKER_TOKEN, t.BROKER_TOKEN), `${label}: webhook reads the same accept.json and token`);
    const vol = (wl) => podSpecOf(wl).volumes.find((v) => v.name === "accept");
    check(eq(vol(webhook), vol(tunnel)), `${label}: webhook and tunnel mount the same accept ConfigMap`);
    for (const v of ["API_BASE_URL", "BROKER_WEBHOOK_API_FALLBACK"]) check(w[v] !== undefined, `${label}: webhook gets ${v}`);
    check(container(webhook, "webhook").livenessProbe?.tcpSocket, `${label}: webhook liveness is a TCP check`);
    const svc = find(objects, "Service", webhookName);
    check(svc && matches(svc.spec.selector, podLabelsOf(webhook)) && !matches(svc.spec.selector, podLabelsOf(tunnel)),
      `${label}: Service ${webhookName} selects the webhook pods only`);
  }
  const pdb = find(objects, "PodDisruptionBudget", tunnelName);
  check(replicas > 1 ? !!pdb : !pdb, `${label}: tunnel PodDisruptionBudget ${replicas > 1 ? "present" : "absent with 1 replica"}`);
  return { tunnel, t, a, webhook };
}

async function clientChecks() {
  const chart = "broker-client";
  let o = await render(chart, CREL, CNS, "HA off", []);
  if (o) {
    const r = clientCommon(o, "HA off", { replicas: 1, ha: false });
    if (r) {
      const url = `http://${webhookName}.${CNS}.svc.cluster.local:8001`;
      check(r.t.BROKER_CLIENT_URL === url, `HA off: default BROKER_CLIENT_URL is the webhook Service (${url})`, r.t.BROKER_CLIENT_URL);
      check(!find(o, "NetworkPolicy", tunnelName), "HA off: no NetworkPolicy unless asked for");
    }
  }

  for (const replicas of [2, 4]) {
    const label = `HA on, ${replicas} replicas`;
    const args = ["--set", "highAvailabilityMode.enabled=true", "--set", `replicaCount=${replicas}`,
      "--set", `brokerDispatcherUrl=${dispatcherUrl}`, "--set", "brokerClientUrl=https://broker-client.example.test"];
    o = await render(chart, CREL, CNS, label, args);
    if (!o) continue;
    const r = clientCommon(o, label, { replicas, ha: true });
    if (!r) continue;
    check(r.a.BROKER_DISPATCHER_BASE_URL === dispatcherUrl, `${label}: BROKER_DISPATCHER_BASE_URL comes from brokerDispatcherUrl`, r.a.BROKER_DISPATCHER_BASE_URL);
    check(r.t.BROKER_CLIENT_URL === "https://broker-client.example.test" && r.a.BROKER_CLIENT_URL === r.t.BROKER_CLIENT_URL,
      `${label}: BROKER_CLIENT_URL comes from brokerClientUrl`);
  }

  // Existing Secrets and ConfigMaps, a CA bundle and HTTPS on the webhook.
  const existing = ["Secret/scm-broker-token", "ConfigMap/scm-accept", "Secret/corp-ca", "Secret/webhook-tls"];
  const label = "HA on, existing Secret/ConfigMap, CA, HTTPS";
  o = await render(chart, CREL, CNS, label, ["--set", "highAvailabilityMode.enabled=true", "--set", "replicaCount=3",
    "--set", "brokerToken=", "--set", "brokerTokenSecret.name=scm-broker-token", "--set", "brokerTokenSecret.key=token",
    "--set", "acceptJson=", "--set", "acceptJsonConfigMap.name=scm-accept",
    "--set", "caCertFileSecret.name=corp-ca", "--set", "enableBrokerLocalWebserverOverHttps=true",
    "--set", "httpsSecret.name=webhook-tls"], existing);
  if (o) {
    const r = clientCommon(o, label, { replicas: 3, ha: true });
    if (r) {
      check(eq(r.t.BROKER_TOKEN, { secretKeyRef: { name: "scm-broker-token", key: "token" } }), `${label}: token from the existing Secret`, r.t.BROKER_TOKEN);
      check(!o.some((x) => x.kind === "Secret" && x.metadata.name === `${CREL}-token`), `${label}: the chart makes no token Secret`);
      const accept = podSpecOf(r.tunnel).volumes.find((v) => v.name === "accept");
      check(accept?.configMap?.name === "scm-accept", `${label}: accept.json from the existing ConfigMap`);
      check(r.t.CA_CERT === "/etc/broker/ca/ca.pem" && r.a.CA_CERT === r.t.CA_CERT, `${label}: CA_CERT on tunnel and ha-agent`);
      const w = container(r.webhook, "webhook");
      const we = envOf(w);
      check(we.HTTPS_CERT && we.HTTPS_KEY && we.CA_CERT, `${label}: webhook gets HTTPS_CERT, HTTPS_KEY and CA_CERT`);
      check(w.readinessProbe?.httpGet?.scheme === "HTTPS", `${label}: webhook readiness uses HTTPS`, w.readinessProbe);
      check(r.t.BROKER_CLIENT_URL.startsWith("https://"), `${label}: default BROKER_CLIENT_URL is https`, r.t.BROKER_CLIENT_URL);
    }
  }

  const mtls = "HA off, mutual TLS on the tunnel";
  o = await render(chart, CREL, CNS, mtls, ["--set", "tunnelClientCertSecret.name=worker-cert"], ["Secret/worker-cert"]);
  if (o) {
    const tunnel = find(o, "Deployment", tunnelName);
    const t = envOf(container(tunnel, "tunnel"));
    check(t.BROKER_TUNNEL_CLIENT_CERT === "/etc/broker/tunnel-client/tls.crt" && t.BROKER_TUNNEL_CLIENT_KEY === "/etc/broker/tunnel-client/tls.key",
      `${mtls}: BROKER_TUNNEL_CLIENT_CERT/_KEY set`, [t.BROKER_TUNNEL_CLIENT_CERT, t.BROKER_TUNNEL_CLIENT_KEY]);
    const v = podSpecOf(tunnel).volumes.find((x) => x.name === "tunnel-client-cert");
    check(v?.secret?.secretName === "worker-cert", `${mtls}: the certificate from Secret worker-cert`, v);
    const m = container(tunnel, "tunnel").volumeMounts.find((x) => x.name === "tunnel-client-cert");
    check(m?.mountPath === "/etc/broker/tunnel-client" && m.readOnly, `${mtls}: mounted read-only into the tunnel container`, m);
  }

  const npLabel = "HA on, NetworkPolicy";
  o = await render(chart, CREL, CNS, npLabel, ["--set", "highAvailabilityMode.enabled=true",
    "--set", "networkPolicy.enabled=true",
    "--set", "networkPolicy.brokerServer[0].cidr=203.0.113.0/24", "--set", "networkPolicy.brokerServer[0].ports[0]=443",
    "--set", "networkPolicy.dispatcher[0].cidr=198.51.100.7/32", "--set", "networkPolicy.dispatcher[0].ports[0]=443",
    "--set", "networkPolicy.origins[0].cidr=10.20.0.0/16", "--set", "networkPolicy.origins[0].ports[0]=443"]);
  if (o) {
    clientCommon(o, npLabel, { replicas: 2, ha: true });
    const np = find(o, "NetworkPolicy", tunnelName);
    if (check(np, `${npLabel}: NetworkPolicy for the tunnel pods`)) {
      const cidrs = np.spec.egress.flatMap((e) => (e.to || []).map((t) => t.ipBlock?.cidr).filter(Boolean));
      check(eq(cidrs, ["203.0.113.0/24", "198.51.100.7/32", "10.20.0.0/16"]), `${npLabel}: egress to server, dispatcher and origins only`, cidrs);
      const dns = np.spec.egress.find((e) => e.ports?.some((p) => p.port === 53 && p.protocol === "UDP"));
      check(dns, `${npLabel}: egress to DNS`);
      check(np.spec.ingress.some((i) => i.ports?.some((p) => p.port === 7344)), `${npLabel}: webhook pods may reach the egress port`);
    }
    check(find(o, "NetworkPolicy", webhookName), `${npLabel}: NetworkPolicy for the webhook pods`);
  }

  const bare = "HA off, no sidecar, CA text, Ingress";
  o = await render(chart, CREL, CNS, bare, ["--set", "haAgent.enabled=false",
    "--set-string", "caCertFile=-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----",
    "--set", "brokerIngress.enabled=true", "--set", "brokerIngress.host=broker-client.example.test",
    "--set", "tunnel.strategy.type=Recreate"]);
  if (o) {
    const tunnel = find(o, "Deployment", tunnelName);
    const names = podSpecOf(tunnel).containers.map((c) => c.name);
    const t = envOf(container(tunnel, "tunnel"));
    check(eq(names, ["tunnel"]) && t.BROKER_HA_AGENT_ADDR === undefined && t.BROKER_HA_MODE_ENABLED === "false",
      `${bare}: one tunnel container that dials BROKER_SERVER_URL itself`, names);
    check(eq(tunnel.spec.strategy, { type: "Recreate" }), `${bare}: tunnel.strategy.type=Recreate drops rollingUpdate`, tunnel.spec.strategy);
    const ca = find(o, "ConfigMap", `${CREL}-ca`);
    check(ca?.data["ca.pem"].includes("BEGIN CERTIFICATE") && t.CA_CERT === "/etc/broker/ca/ca.pem", `${bare}: CA bundle in a ConfigMap, CA_CERT set`);
    const ing = find(o, "Ingress", webhookName);
    check(ing?.spec.rules[0].http.paths[0].backend.service.name === webhookName, `${bare}: Ingress routes to the webhook Service`);
  }

  o = await render(chart, CREL, CNS, "API fallback", ["--set", "webhook.apiFallback=true"]);
  if (o) {
    const w = container(find(o, "Deployment", webhookName), "webhook");
    check(envOf(w).BROKER_WEBHOOK_API_FALLBACK === "true" && w.readinessProbe?.tcpSocket,
      "API fallback: BROKER_WEBHOOK_API_FALLBACK=true and a TCP readiness (reachable with no tunnel)");
  }

  rejects(chart, CREL, CNS, "HA on with replicaCount=5", ["--set", "highAvailabilityMode.enabled=true", "--set", "replicaCount=5"],
    ["replicaCount", "less than or equal to 4"]);
  rejects(chart, CREL, CNS, "HA on with replicaCount=1", ["--set", "highAvailabilityMode.enabled=true", "--set", "replicaCount=1"],
    ["replicaCount", "greater than or equal to 2"]);
  rejects(chart, CREL, CNS, "no token", ["--set", "brokerToken="], ["brokerToken: required"]);
  rejects(chart, CREL, CNS, "no accept.json", ["--set", "acceptJson="], ["acceptJson: required"]);
  rejects(chart, CREL, CNS, "HA on without the ha-agent", ["--set", "highAvailabilityMode.enabled=true", "--set", "haAgent.enabled=false"],
    ["haAgent.enabled"]);
  rejects(chart, CREL, CNS, "NetworkPolicy without a server CIDR", ["--set", "networkPolicy.enabled=true"], ["networkPolicy.brokerServer"]);
  rejects(chart, CREL, CNS, "a client certificate over http", ["--set", "tunnelClientCertSecret.name=worker-cert", "--set", "brokerServerUrl=http://broker.example.test"],
    ["tunnelClientCertSecret.name", "https://"]);
  rejects(chart, CREL, CNS, "an unknown value", ["--set", "replicas=3"], ["replicas"]);
}

// -------------------------------------------------------- broker-server

const SNS = "broker-system";
const SREL = "broker-server";
const headless = `${SREL}-headless`;
const dispName = `${SREL}-dispatcher`;

function serverCommon(objects, label, { replicas, scheme = "http", dispatchers = 1 }) {
  const sts = find(objects, "StatefulSet", SREL);
  if (!check(sts, `${label}: StatefulSet ${SREL} is rendered`)) return null;
  check(sts.spec.replicas === replicas, `${label}: ${replicas} server pods`);
  const last = `${SREL}-${replicas - 1}`;
  check(last.slice(last.lastIndexOf("-") + 1) === String(replicas - 1), `${label}: pod ${last} is server id ${replicas - 1} (text after the last '-')`);
  const h = find(objects, "Service", headless);
  check(h && h.spec.clusterIP === "None" && sts.spec.serviceName === headless, `${label}: serviceName is the headless Service ${headless}`);
  check(find(objects, "Service", SREL)?.spec.ports.some((p) => p.port === 7341), `${label}: Service ${SREL} serves the platform ingress on 7341`);
  const c = container(sts, "server");
  const env = c.env.map((e) => e.name);
  const e = envOf(c);
  check(env[0] === "POD_NAME" && eq(e.POD_NAME, { fieldRef: { fieldPath: "metadata.name" } }), `${label}: POD_NAME from the pod name, defined first`);
  check(e.HOSTNAME === "$(POD_NAME)", `${label}: HOSTNAME is the pod name (server id = ordinal)`);
  const host = `$(POD_NAME).${headless}.${SNS}.svc.cluster.local`;
  check(e.BROKER_SERVER_ADVERTISE_URL === `${scheme}://${host}:7342`, `${label}: BROKER_SERVER_ADVERTISE_URL=${scheme}://${host}:7342`, e.BROKER_SERVER_ADVERTISE_URL);
  check(e.BROKER_SERVER_INTERNAL_URL === `${scheme}://${host}:7341`, `${label}: BROKER_SERVER_INTERNAL_URL=${scheme}://${host}:7341`, e.BROKER_SERVER_INTERNAL_URL);
  const durl = `http://${dispName}.${SNS}.svc.cluster.local:7340`;
  check(e.DISPATCHER_URL === durl, `${label}: DISPATCHER_URL=${durl}`, e.DISPATCHER_URL);
  check(e.PORT === "7341" && e.BROKER_TUNNEL_PORT === "7342" && e.ACCEPT, `${label}: PORT=7341, BROKER_TUNNEL_PORT=7342, ACCEPT set`);
  const drain = Number(e.BROKER_DRAIN_WAIT_MS);
  const grace = podSpecOf(sts).terminationGracePeriodSeconds;
  check(drain === 10000 && grace * 1000 > drain + 10000, `${label}: grace ${grace}s > BROKER_DRAIN_WAIT_MS ${drain}ms + in-flight time`);
  for (const p of ["readinessProbe", "livenessProbe"]) {
    check(c[p]?.httpGet?.path === "/healthcheck" && c[p].httpGet.scheme === scheme.toUpperCase(), `${label}: server ${p} GET /healthcheck over ${scheme.toUpperCase()}`, c[p]);
  }
  check(find(objects, "PodDisruptionBudget", SREL), `${label}: server PodDisruptionBudget`);
  check(podSpecOf(sts).affinity?.podAntiAffinity && podSpecOf(sts).topologySpreadConstraints?.length, `${label}: server anti-affinity and topology spread`);

  const disp = find(objects, "Deployment", dispName);
  if (!check(disp, `${label}: Deployment ${dispName} is rendered`)) return null;
  check(disp.spec.replicas === dispatchers, `${label}: ${dispatchers} dispatcher replica(s)`);
  const d = container(disp, "dispatcher");
  const de = envOf(d);
  check(de.PORT === "7340" && de.BROKER_MAX_CLIENTS_PER_TOKEN === "4", `${label}: dispatcher PORT=7340, BROKER_MAX_CLIENTS_PER_TOKEN=4`);
  check(d.readinessProbe?.httpGet?.path === "/healthcheck", `${label}: dispatcher readiness GET /healthcheck`);
  check(find(objects, "Service", dispName)?.spec.ports[0].port === 7340, `${label}: Service ${dispName} on 7340`);
  return { sts, e, de };
}

async function serverChecks() {
  const chart = "broker-server";
  let o = await render(chart, SREL, SNS, "defaults (3 servers, 1 dispatcher in memory)", []);
  if (o) {
    const r = serverCommon(o, "defaults", { replicas: 3 });
    if (r) check(r.de.BROKER_DISPATCHER_REDIS_URL === undefined && !find(o, "StatefulSet", `${SREL}-redis`), "defaults: no Redis with one dispatcher");
  }

  let label = "3 dispatchers, bundled Redis with a password";
  o = await render(chart, SREL, SNS, label, ["--set", "dispatcher.replicaCount=3", "--set", "redis.enabled=true", "--set", "redis.auth.password=ci-only-password"]);
  if (o) {
    const r = serverCommon(o, label, { replicas: 3, dispatchers: 3 });
    const redis = find(o, "StatefulSet", `${SREL}-redis`);
    check(redis && container(redis, "redis")?.image.startsWith("redis:"), `${label}: Redis StatefulSet with the official redis image`);
    if (r) {
      const url = `redis://:$(REDIS_PASSWORD)@${SREL}-redis.${SNS}.svc.cluster.local:6379/0`;
      check(r.de.BROKER_DISPATCHER_REDIS_URL === url, `${label}: BROKER_DISPATCHER_REDIS_URL=${url}`, r.de.BROKER_DISPATCHER_REDIS_URL);
      check(r.de.REDIS_PASSWORD?.secretKeyRef, `${label}: the password comes from a Secret`);
    }
    check(find(o, "PodDisruptionBudget", dispName), `${label}: dispatcher PodDisruptionBudget`);
  }

  label = "2 dispatchers, external Redis";
  o = await render(chart, SREL, SNS, label, ["--set", "dispatcher.replicaCount=2", "--set", "redis.url=redis://:pw@redis.example.test:6379/1"]);
  if (o) {
    const r = serverCommon(o, label, { replicas: 3, dispatchers: 2 });
    if (r) check(r.de.BROKER_DISPATCHER_REDIS_URL?.secretKeyRef?.name === `${dispName}-redis-url`, `${label}: the Redis URL comes from a Secret`);
    check(!find(o, "StatefulSet", `${SREL}-redis`), `${label}: no bundled Redis`);
  }

  label = "TLS on, 2 servers";
  o = await render(chart, SREL, SNS, label, ["--set", "replicaCount=2", "--set", "enableHttps=true", "--set", "httpsSecret.name=server-tls"], ["Secret/server-tls"]);
  if (o) {
    const r = serverCommon(o, label, { replicas: 2, scheme: "https" });
    if (r) check(r.e.HTTPS_CERT && r.e.HTTPS_KEY, `${label}: HTTPS_CERT and HTTPS_KEY set`);
    if (r) check(r.e.BROKER_TUNNEL_CLIENT_CA === undefined, `${label}: no mutual TLS unless asked`);
  }

  label = "TLS on, mutual TLS on the tunnel";
  o = await render(chart, SREL, SNS, label, ["--set", "enableHttps=true", "--set", "httpsSecret.name=server-tls",
    "--set", "tunnelClientCaSecret.name=worker-ca"], ["Secret/server-tls", "Secret/worker-ca"]);
  if (o) {
    const r = serverCommon(o, label, { replicas: 3, scheme: "https" });
    if (r) {
      check(r.e.BROKER_TUNNEL_CLIENT_CA === "/etc/broker/tunnel-client-ca/ca.pem", `${label}: BROKER_TUNNEL_CLIENT_CA set`, r.e.BROKER_TUNNEL_CLIENT_CA);
      const v = podSpecOf(r.sts).volumes.find((x) => x.name === "tunnel-client-ca");
      check(v?.secret?.secretName === "worker-ca" && v.secret.items?.[0]?.key === "ca.crt", `${label}: the CA bundle from Secret worker-ca (key ca.crt)`, v);
    }
  }

  rejects(chart, SREL, SNS, "2 dispatchers without Redis", ["--set", "dispatcher.replicaCount=2"], ["dispatcher.replicaCount=2", "needs Redis"]);
  rejects(chart, SREL, SNS, "grace period shorter than the drain", ["--set", "server.terminationGracePeriodSeconds=5"], ["terminationGracePeriodSeconds=5"]);
  rejects(chart, SREL, SNS, "no accept.json", ["--set", "acceptJson="], ["acceptJson: required"]);
  rejects(chart, SREL, SNS, "mutual TLS without TLS", ["--set", "tunnelClientCaSecret.name=worker-ca"], ["tunnelClientCaSecret.name", "enableHttps=true"]);
  rejects(chart, SREL, SNS, "bundled and external Redis at once", ["--set", "redis.enabled=true", "--set", "redis.url=redis://r:6379"], ["choose one"]);
}

await clientChecks();
await serverChecks();
console.log(`\ncheck_rendered: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
