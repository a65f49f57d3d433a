#!/usr/bin/python3
"""Checks deploy/k8s with the real tools: every kustomization renders with plain
`kubectl kustomize DIR`; every rendered object validates against the strict Kubernetes 1.32 JSON
schemas (and a deliberately misspelt field fails them); and the objects agree with each other:
selectors match the pod template's labels, probe and Service ports name real container ports,
referenced volumes and ConfigMaps exist, the grace period covers preStop plus the drain, the
PrometheusRule is tandem.rules.yml and the dashboard ConfigMap is tandem.json, byte for byte.

The schemas are looked up in $TANDEM_K8S_SCHEMAS, then ../shared/k8s-schemas/v1.32.2-strict
beside the checkout; without them the test is skipped (exit 77), saying so.

  check_k8s.py                 run every check
  check_k8s.py --write-rule    regenerate deploy/k8s/base/prometheusrule.yaml from the rules
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/autoscaling", "overlays/tls"]
RULES = os.path.join(ROOT, "deploy", "prometheus", "tandem.rules.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "tandem.json")
PROMETHEUS_RULE = os.path.join(K8S, "base", "prometheusrule.yaml")
SKIP = 77

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def ok(msg):
    print("ok: " + msg)


def write_rule():
    with open(RULES) as f:
        rules = yaml.safe_load(f)
    obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "tandem", "labels": {"app.kubernetes.io/name": "tandem"}},
           "spec": rules}
    header = ("# GENERATED from deploy/prometheus/tandem.rules.yml by tests/deploy/check_k8s.py "
              "--write-rule:\n# edit that file, then run it again (the test fails while the two "
              "differ). Add the label your\n# Prometheus' ruleSelector wants "
              "(kube-prometheus-stack: release: <its release name>).\n")
    with open(PROMETHEUS_RULE, "w") as f:
        f.write(header + yaml.safe_dump(obj, sort_keys=False, width=100))


def schema_dir():
    candidates = [os.environ.get("TANDEM_K8S_SCHEMAS", ""),
                  os.path.join(ROOT, "..", "shared", "k8s-schemas", "v1.32.2-strict")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "statefulset-apps-v1.json")):
            return os.path.abspath(c)
    return None


def render(kustomization):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(K8S, kustomization)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"kubectl kustomize {kustomization}: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def schema_name(obj):
    group, _, version = obj["apiVersion"].rpartition("/")
    kind = obj["kind"].lower()
    if not group:
        return f"{kind}-{version}.json"
    return f"{kind}-{group.split('.')[0]}-{version}.json"


def validator(schemas, obj):
    path = os.path.join(schemas, schema_name(obj))
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate(schemas, where, docs):
    for obj in docs:
        name = f"{where}: {obj['kind']}/{obj['metadata']['name']}"
        v = validator(schemas, obj)
        if v is None:
            fail(f"{name}: no schema {schema_name(obj)}")
            continue
        errors = sorted(v.iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            for e in errors[:5]:
                fail(f"{name}: {'/'.join(map(str, e.path))}: {e.message}")
        else:
            ok(f"{name} validates against {schema_name(obj)}")


def misspelt_field_fails(schemas, docs):
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    bad = copy.deepcopy(sts)
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    errors = list(validator(schemas, bad).iter_errors(bad))
    if any("livenesProbe" in e.message for e in errors):
        ok("a StatefulSet with 'livenesProbe' is rejected: " + errors[0].message)
    else:
        fail("the misspelt field livenesProbe passed the schema: the schemas are not strict")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def flags_of(docs):
    """The tandemd flags of every --flagfile the container reads, later files winning."""
    sts = by_kind(docs, "StatefulSet")[0]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    files = {}
    for name, path in mounts.items():
        cm_name = volumes.get(name, {}).get("configMap", {}).get("name")
        for cm in by_kind(docs, "ConfigMap"):
            if cm["metadata"]["name"] == cm_name:
                for key, text in cm.get("data", {}).items():
                    files[f"{path}/{key}"] = text
    flags = {}
    for arg in container.get("args", []):
        if arg.startswith("--flagfile="):
            text = files.get(arg.split("=", 1)[1])
            if text is None:
                fail(f"{arg}: no such file in a mounted ConfigMap")
                continue
            for line in text.splitlines():
                m = re.match(r"--([a-z_]+)=(.*)$", line.strip())
                if m:
                    flags[m.group(1)] = m.group(2)
    return flags


def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def consistency(where, docs):
    sts = by_kind(docs, "StatefulSet")
    if len(sts) != 1:
        fail(f"{where}: expected one StatefulSet, got {len(sts)}")
        return
    sts = sts[0]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    if selector_matches(sts["spec"]["selector"]["matchLabels"], labels):
        ok(f"{where}: the StatefulSet selector matches its pod template")
    else:
        fail(f"{where}: StatefulSet selector {sts['spec']['selector']} misses {labels}")
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    if sts["spec"]["serviceName"] not in services or \
            services[sts["spec"]["serviceName"]]["spec"].get("clusterIP") != "None":
        fail(f"{where}: serviceName {sts['spec']['serviceName']} is not a headless Service")
    for s in services.values():
        if not selector_matches(s["spec"]["selector"], labels):
            fail(f"{where}: Service {s['metadata']['name']} selects no pod")
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in ports:
                fail(f"{where}: Service {s['metadata']['name']} port {p['name']} targets "
                     f"{p['targetPort']}, not a container port name ({sorted(ports)})")
            elif ports[p["targetPort"]] != p["port"]:
                fail(f"{where}: Service port {p['name']} ({p['port']}) differs from "
                     f"containerPort {ports[p['targetPort']]}")
    ok(f"{where}: Services select the pods and target named container ports")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        if not selector_matches(pdb["spec"]["selector"]["matchLabels"], labels):
            fail(f"{where}: PodDisruptionBudget selects no pod")
    # With TLS the kubelet's native gRPC probes (plaintext only) cannot talk to the gRPC port:
    # the probes use the metrics port's HTTPS /healthz and /readyz instead.
    tls = any(a.endswith("/tls.flags") for a in container.get("args", []))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = container.get(probe)
        if not p:
            fail(f"{where}: no {probe}")
        elif tls:
            want = "/healthz" if probe == "livenessProbe" else "/readyz"
            h = p.get("httpGet", {})
            if "grpc" in p or h.get("scheme") != "HTTPS" or h.get("path") != want or \
                    h.get("port") not in ("metrics", ports.get("metrics")):
                fail(f"{where}: {probe} is not an HTTPS {want} probe on the metrics port")
        elif "grpc" not in p:
            fail(f"{where}: {probe} is not a gRPC probe")
        elif p["grpc"]["port"] != ports.get("grpc"):
            fail(f"{where}: {probe} probes port {p['grpc']['port']}, not the grpc port")
    ok(f"{where}: startup, readiness and liveness probe " +
       ("/readyz and /healthz over HTTPS on the metrics port" if tls else
        f"the gRPC health service on port {ports.get('grpc')}"))

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    configmaps = {c["metadata"]["name"] for c in by_kind(docs, "ConfigMap")}
    for m in container.get("volumeMounts", []):
        if m["name"] not in volumes and m["name"] not in claims:
            fail(f"{where}: volumeMount {m['name']} has no volume")
    for v in volumes.values():
        cm = v.get("configMap", {}).get("name")
        if cm and cm not in configmaps:
            fail(f"{where}: volume {v['name']} names ConfigMap {cm}, which is not rendered")
    secrets = {c["metadata"]["name"]: c for c in by_kind(docs, "Secret")}
    for v in volumes.values():
        sec = v.get("secret", {}).get("secretName")
        if sec and sec not in secrets and sec != "tandemd-tls":  # TLS: the operator's Secret
            fail(f"{where}: volume {v['name']} names Secret {sec}, which is not rendered")
    ok(f"{where}: every volumeMount has a volume, every ConfigMap and Secret volume exists")

    flags = flags_of(docs)
    state = next((m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims), None)
    for flag in ("models_dir", "data_dir", "state_dir"):
        if not state or not flags.get(flag, "").startswith(state + "/"):
            fail(f"{where}: --{flag}={flags.get(flag)} is not on the PersistentVolumeClaim "
                 f"({state})")
    if flags.get("listen", "").rsplit(":", 1)[-1] != str(ports.get("grpc")) or \
            flags.get("metrics_listen", "").rsplit(":", 1)[-1] != str(ports.get("metrics")):
        fail(f"{where}: --listen / --metrics_listen do not match the container ports")
    # Files named by flags (tokens, TLS material) lie in a mounted Secret under their key.
    mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in container["volumeMounts"]}
    for flag in ("auth_tokens", "tls_cert", "tls_key", "tls_client_ca"):
        path = flags.get(flag)
        if not path:
            continue
        folder, key = path.rsplit("/", 1)
        secret = mounts.get(folder, {}).get("secret", {}).get("secretName")
        if not secret:
            fail(f"{where}: --{flag}={path} is not in a mounted Secret")
        elif secret in secrets and key not in secrets[secret].get("data", {}):
            fail(f"{where}: --{flag}={path}: Secret {secret} has no key {key}")
    if not flags.get("auth_tokens") and not flags.get("tls_client_ca"):
        fail(f"{where}: no --auth_tokens: tandemd would listen on loopback only and the "
             f"probes and Services would reach nothing")
    ok(f"{where}: --auth_tokens (and TLS files) lie in mounted Secrets")
    pre = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_sleep = int(pre[-1]) if len(pre) == 2 and pre[0].endswith("sleep") else 0
    drain = int(flags.get("shutdown_grace_seconds", 30))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    # The drain also waits for the running job's checkpoint at its next step: keep a margin.
    if grace >= pre_sleep + drain + 30:
        ok(f"{where}: terminationGracePeriodSeconds {grace} >= preStop {pre_sleep} s + "
           f"--shutdown_grace_seconds {drain} + 30 s for the checkpoint")
    else:
        fail(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_sleep} + drain "
             f"{drain} + 30")

    sc, psc = container.get("securityContext", {}), spec.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and isinstance(psc.get("runAsUser"), int) and
            psc["runAsUser"] > 0 and sc.get("readOnlyRootFilesystem") and
            sc.get("allowPrivilegeEscalation") is False):
        fail(f"{where}: securityContext is not non-root / read-only / no escalation")
    res = container.get("resources", {})
    if not res.get("requests") or not res.get("limits"):
        fail(f"{where}: resources need requests and limits")

    for smon in by_kind(docs, "ServiceMonitor"):
        matched = [s for s in services.values()
                   if selector_matches(smon["spec"]["selector"]["matchLabels"],
                                       s["metadata"]["labels"])]
        if len(matched) != 1:
            fail(f"{where}: ServiceMonitor selects {len(matched)} Services (want 1: no double "
                 f"scrapes)")
        elif matched[0]["metadata"]["name"] != "tandem":
            fail(f"{where}: the scrape job would be {matched[0]['metadata']['name']}, the rules "
                 f"select job=\"tandem\"")
        else:
            names = {p["name"] for p in matched[0]["spec"]["ports"]}
            for e in smon["spec"]["endpoints"]:
                if e["port"] not in names:
                    fail(f"{where}: ServiceMonitor endpoint port {e['port']} is not a port of "
                         f"Service tandem")
            ok(f"{where}: the ServiceMonitor scrapes Service tandem's metrics port")

    with open(RULES) as f:
        rules = yaml.safe_load(f)
    for pr in by_kind(docs, "PrometheusRule"):
        if pr["spec"] == rules:
            ok(f"{where}: the PrometheusRule's spec is deploy/prometheus/tandem.rules.yml")
        else:
            fail(f"{where}: the PrometheusRule differs from tandem.rules.yml: run "
                 f"tests/deploy/check_k8s.py --write-rule")
    with open(DASHBOARD) as f:
        dashboard = f.read()
    boards = [c for c in by_kind(docs, "ConfigMap") if "tandem.json" in c.get("data", {})]
    if len(boards) == 1 and boards[0]["data"]["tandem.json"] == dashboard and \
            boards[0]["metadata"]["labels"].get("grafana_dashboard") == "1":
        ok(f"{where}: the dashboard ConfigMap holds deploy/grafana/dashboards/tandem.json")
    else:
        fail(f"{where}: no dashboard ConfigMap equal to tandem.json (with grafana_dashboard=1)")

    namespaces = {d["metadata"].get("namespace") for d in docs}
    if namespaces != {"tandem"}:
        fail(f"{where}: objects in namespaces {namespaces}, want them all in tandem")
    return sts, flags


def overlay_checks(where, docs, sts, flags):
    container = sts["spec"]["template"]["spec"]["containers"][0]
    if where == "overlays/gpu":
        limits = container["resources"]["limits"]
        if limits.get("nvidia.com/gpu") != "1" or \
                container["resources"]["requests"].get("nvidia.com/gpu") != "1":
            fail("gpu: nvidia.com/gpu is not requested and limited to 1")
        if not container["image"].endswith("-cuda"):
            fail(f"gpu: image {container['image']} is not the CUDA image")
        if flags.get("devices") not in ("auto", "cuda:0"):
            fail(f"gpu: --devices={flags.get('devices')} would not use the GPU")
        ok("gpu: one nvidia.com/gpu, the CUDA image, --devices=" + str(flags.get("devices")))
    if where == "overlays/tls":
        if not flags.get("tls_cert") or not flags.get("tls_key"):
            fail("tls: --tls_cert and --tls_key are not set")
        else:
            ok("tls: --tls_cert / --tls_key from Secret tandemd-tls")
    if where == "overlays/autoscaling":
        hpas = by_kind(docs, "HorizontalPodAutoscaler")
        if len(hpas) != 1:
            fail("autoscaling: expected one HorizontalPodAutoscaler")
            return
        ref = hpas[0]["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("StatefulSet", sts["metadata"]["name"]):
            fail(f"autoscaling: the HPA scales {ref}, not the StatefulSet")
        with open(os.path.join(K8S, "overlays", "autoscaling",
                               "prometheus-adapter-values.yaml")) as f:
            adapter = yaml.safe_load(f)
        served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
        for m in hpas[0]["spec"]["metrics"]:
            name = m["pods"]["metric"]["name"]
            if name not in served:
                fail(f"autoscaling: the HPA reads {name}, which the adapter rule does not serve")
        ok("autoscaling: the HPA scales the StatefulSet on " + ", ".join(sorted(served)))


def main():
    if "--write-rule" in sys.argv:
        write_rule()
        return 0
    if not shutil.which("kubectl"):
        print("SKIP: no kubectl on PATH (it brings kustomize); nothing was rendered")
        return SKIP
    schemas = schema_dir()
    if schemas is None:
        print("SKIP: no Kubernetes 1.32 JSON schemas (set TANDEM_K8S_SCHEMAS, or put shared/ "
              "with k8s-schemas/v1.32.2-strict beside the checkout); nothing was validated")
        return SKIP
    print(f"schemas: {schemas}")
    base = None
    for k in KUSTOMIZATIONS:
        docs = render(k)
        if not docs:
            continue
        ok(f"kubectl kustomize deploy/k8s/{k}: {len(docs)} objects")
        validate(schemas, k, docs)
        if k == "base":
            base = docs
        checked = consistency(k, docs)
        if checked:
            overlay_checks(k, docs, *checked)
    if base:
        misspelt_field_fails(schemas, base)
    print(f"{len(failures)} failed" if failures else "all k8s checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
