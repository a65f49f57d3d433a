#!/usr/bin/python3
"""The dashboard and the alerting rules against real data: Debian's `prometheus` scrapes a real
tandemd every second (with deploy/prometheus/prometheus.yml and tandem.rules.yml) while real
work runs on it — text streams, image generations, refused requests, and a text training job
that evaluates and checkpoints. Then:
  - `promtool check metrics` passes on a live scrape; /healthz and /readyz answer 200;
  - every variable query of deploy/grafana/dashboards/tandem.json returns values, and every panel
    query, with $__rate_interval and the variables substituted, returns at least one finite
    sample through Prometheus' HTTP API; every {{label}} of a legend is on the returned series;
  - every tandem_* family of the scrape appears in some panel;
  - every alerting rule evaluates without error on this data;
  - the prometheus-adapter rule's query (deploy/k8s/overlays/autoscaling) parses;
  - SIGTERM ends tandemd (the job still running: it checkpoints and stops) with exit 0.

  live_prometheus_test.py BUILD_DIR
Skips (exit 77) when prometheus or promtool is missing (scripts/setup.sh installs them).
"""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "tandem.json")
PROM_DIR = os.path.join(ROOT, "deploy", "prometheus")
ADAPTER = os.path.join(ROOT, "deploy", "k8s", "overlays", "autoscaling",
                       "prometheus-adapter-values.yaml")
SCRAPE_SECONDS = 1
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"  # Grafana's $__rate_interval for this scrape interval
WORKLOAD_SECONDS = 25

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


def ok(msg):
    print("ok: " + msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what, fn, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if fn():
                return True
        except OSError:
            pass
        time.sleep(0.2)
    fail(f"timed out waiting for {what}")
    return False


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(url, timeout=30)
        data = json.loads(body)
        if data.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {data.get('error', body[:300])}")
        return data["data"]


def make_models(bin_dir, work):
    corpus = os.path.join(work, "data", "corpus.txt")
    os.makedirs(os.path.dirname(corpus))
    words = "the quick brown fox jumps over a lazy dog near river bank under old stone bridge".split()
    with open(corpus, "w") as f:
        for i in range(600):
            f.write(" ".join(words[(i + j) % len(words)] for j in range(9)) + f" {i}\n\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run(f"{bin_dir}/tandem-init", f"--corpus={corpus}", f"--out={work}/models/tiny",
        "--vocab_size=300", "--dim=32", "--layers=2", "--heads=4", "--seq_len=256", "--seed=3")
    run(f"{bin_dir}/tandem-init", "--kind=image", f"--out={work}/models/pix", "--image_size=8",
        "--channels=1", "--widths=8,16", "--attention_levels=1", "--text_dim=16",
        "--text_layers=1", "--text_seq_len=8", "--vocab_size=300", "--diffusion_steps=100",
        "--seed=4")


def workload(bin_dir, server, work, stop):
    """Text and image requests in loops until `stop`, plus refused ones."""
    def client(*args):
        return subprocess.run([f"{bin_dir}/tandem", f"--server={server}"] + list(args),
                              capture_output=True, text=True, timeout=60)

    def text_loop(seed):
        while not stop.is_set():
            client("generate", "--model=tiny", "--max_tokens=48", "--temperature=0.8",
                   f"--seed={seed}", "the quick brown")
            seed += 2

    def image_loop():
        seed = 1
        while not stop.is_set():
            client("image", "--model=pix", "--steps=8", f"--seed={seed}", "--n=2",
                   "-o", os.path.join(work, f"img-{seed % 3}.png"), "a fox")
            seed += 1

    def refused_loop():
        while not stop.is_set():
            client("generate", "--model=nonexistent", "hello")     # not_found
            client("generate", "--model=tiny", "--max_tokens=100000", "hello")  # invalid_argument
            time.sleep(1)

    threads = [threading.Thread(target=text_loop, args=(s,)) for s in (1, 2)]
    threads += [threading.Thread(target=image_loop), threading.Thread(target=refused_loop)]
    for t in threads:
        t.start()
    return threads


def submit_job(bin_dir, server):
    out = subprocess.run(
        [f"{bin_dir}/tandem", f"--server={server}", "train", "submit", "--name=live",
         "--kind=text", "--dataset=corpus.txt", "--vocab_size=300", "--dim=32", "--layers=1",
         "--heads=4", "--seq_len=64", "--steps=5000", "--batch_size=4", "--eval_every=40",
         "--checkpoint_every=40", "--deploy_as=tiny-trained"],
        capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        fail(f"train submit: {out.stderr.strip()}")
    m = re.search(r"job-\d+", out.stdout)
    return m.group(0) if m else ""


def check_scrape(metrics_port, work):
    status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True)
    if status == 200 and check.returncode == 0:
        ok(f"promtool check metrics: a live scrape of {len(body)} bytes passes")
    else:
        fail(f"promtool check metrics: {check.stdout}{check.stderr}")
    with open(os.path.join(work, "scrape.txt"), "w") as f:
        f.write(body)
    for path in ("/healthz", "/readyz"):
        status, text = http_get(f"http://127.0.0.1:{metrics_port}{path}")
        if status == 200:
            ok(f"{path}: 200 {text.strip()}")
        else:
            fail(f"{path}: {status} {text.strip()}")
    return sorted(set(re.findall(r"^# TYPE (tandem_\w+) ", body, re.M)))


def substitute(expr, values):
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("$" + name, values[name])
    return expr


def check_variables(prom, dashboard, start, end):
    """The variables' values (regex alternations), from their label_values queries."""
    values = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.match(r"label_values\((.+),\s*(\w+)\)$", var["query"]["query"])
        if not m:
            fail(f"variable {var['name']}: not a label_values query")
            continue
        selector, label = substitute(m.group(1), values), m.group(2)
        series = prom.api("series", **{"match[]": selector, "start": start, "end": end})
        found = sorted({s[label] for s in series if label in s})
        if found:
            ok(f"variable ${var['name']}: {found}")
            # As Grafana writes a multi-value variable into a PromQL regex string.
            values[var["name"]] = "|".join(re.escape(v).replace("\\", "\\\\") for v in found)
        else:
            fail(f"variable ${var['name']}: {var['query']['query']} found no values")
            values[var["name"]] = ".*"
    return values


def check_panels(prom, dashboard, values, start, end):
    used = ""
    count = 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            fail(f"panel {panel['title']}: no unit")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"panel {panel['title']}: does not use $datasource")
        for target in panel["targets"]:
            count += 1
            used += target["expr"] + "\n"
            where = f"panel '{panel['title']}' {target['refId']}"
            if target.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{where}: does not use $datasource")
            expr = substitute(target["expr"], values)
            try:
                result = prom.api("query_range", query=expr, start=start, end=end,
                                  step=SCRAPE_SECONDS)["result"]
            except RuntimeError as e:
                fail(f"{where}: {e}")
                continue
            finite = [s for s in result
                      if any(math.isfinite(float(v)) for _, v in s["values"])]
            if not finite:
                fail(f"{where}: no finite sample: {expr}")
                continue
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                missing = [s["metric"] for s in result if label not in s["metric"]]
                if missing:
                    fail(f"{where}: legend label {label} is not on {missing[0]}")
    ok(f"{count} panel queries each returned finite samples")
    return used


def check_rules(prom):
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    bad = [r for r in rules if r.get("health") != "ok"]
    for r in bad:
        fail(f"rule {r['name']}: {r.get('health')} {r.get('lastError')}")
    if rules and not bad:
        ok(f"{len(rules)} alerting rules evaluate without error: "
           + ", ".join(f"{r['name']}={r['state']}" for r in rules))
    elif not rules:
        fail("Prometheus loaded no rules")


def check_adapter(prom, end):
    with open(ADAPTER) as f:
        rules = yaml.safe_load(f)["rules"]["custom"]
    for r in rules:
        query = (r["metricsQuery"].replace("<<.Series>>", "tandem_requests_waiting")
                 .replace("<<.LabelMatchers>>", 'namespace="tandem",pod=~"tandem-0|tandem-1"')
                 .replace("<<.GroupBy>>", "pod"))
        try:
            prom.api("query", query=query, time=end)
            ok(f"prometheus-adapter query parses: {query}")
        except RuntimeError as e:
            fail(f"prometheus-adapter query {query}: {e}")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} is not installed (scripts/setup.sh installs Debian's prometheus)")
            return 77
    bin_dir = os.path.join(os.path.abspath(sys.argv[1]), "bin")
    work = tempfile.mkdtemp(prefix="tandem-live-")
    procs = []
    try:
        return run(bin_dir, work, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if failures:
            for log in ("tandemd.log", "prometheus.log"):
                path = os.path.join(work, log)
                if os.path.exists(path):
                    print(f"--- {log} (tail)")
                    with open(path) as f:
                        print("".join(f.readlines()[-40:]))
        shutil.rmtree(work, ignore_errors=True)


def run(bin_dir, work, procs):
    make_models(bin_dir, work)
    grpc_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    server = f"127.0.0.1:{grpc_port}"
    tandemd_log = open(os.path.join(work, "tandemd.log"), "w")
    tandemd = subprocess.Popen(
        [f"{bin_dir}/tandemd", f"--listen={server}", f"--metrics_listen=127.0.0.1:{metrics_port}",
         f"--models_dir={work}/models", f"--data_dir={work}/data", f"--state_dir={work}/state",
         "--threads=1", "--shutdown_grace_seconds=10", "--log_requests=false"],
        stdout=tandemd_log, stderr=subprocess.STDOUT)
    procs.append(tandemd)

    with open(os.path.join(PROM_DIR, "prometheus.yml")) as f:
        config = yaml.safe_load(f)
    config["global"].update(scrape_interval=f"{SCRAPE_SECONDS}s",
                            evaluation_interval=f"{SCRAPE_SECONDS}s",
                            scrape_timeout=f"{SCRAPE_SECONDS}s")
    config["rule_files"] = [os.path.join(PROM_DIR, r) for r in config["rule_files"]]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config_path = os.path.join(work, "prometheus.yml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    check = subprocess.run(["promtool", "check", "config", config_path], capture_output=True,
                           text=True)
    if check.returncode != 0:
        fail(f"promtool check config (the test's copy): {check.stdout}{check.stderr}")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={work}/tsdb",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
        stdout=open(os.path.join(work, "prometheus.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(prometheus)
    prom = Prometheus(prom_port)

    if not wait_for("tandemd's /readyz",
                    lambda: http_get(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 200, 60):
        return 1
    if not wait_for("Prometheus to be ready",
                    lambda: http_get(f"{prom.base}/-/ready")[0] == 200, 60):
        return 1
    start = time.time()
    job = submit_job(bin_dir, server)
    stop = threading.Event()
    threads = workload(bin_dir, server, work, stop)
    # The scrape checked is one taken while the job runs, once it has evaluated and checkpointed:
    # every family has series then.
    wait_for("the job's first evaluation and checkpoint", lambda: all(
        f in http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        for f in ("tandem_train_eval_loss{", "tandem_train_checkpoint_size_bytes{")),
        WORKLOAD_SECONDS)
    families = check_scrape(metrics_port, work)
    time.sleep(max(0, start + WORKLOAD_SECONDS - time.time()))
    stop.set()
    for t in threads:
        t.join()
    time.sleep(3 * SCRAPE_SECONDS)
    end = time.time()
    targets = prom.api("targets")["activeTargets"]
    if not targets or targets[0]["health"] != "up":
        fail(f"the scrape target is not up: {targets}")
    ok(f"workload ran {end - start:.0f} s with training job {job}")

    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    values = check_variables(prom, dashboard, start, end)
    used = check_panels(prom, dashboard, values, start, end)
    unused = [f for f in families if f not in used]
    if unused:
        fail(f"tandem families in no panel: {unused}")
    else:
        ok(f"all {len(families)} tandem_* families of the scrape appear in some panel")
    check_rules(prom)
    check_adapter(prom, end)

    tandemd.send_signal(signal.SIGTERM)
    try:
        rc = tandemd.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = None
    if rc == 0:
        ok("tandemd exited 0 after SIGTERM")
    else:
        fail(f"tandemd after SIGTERM: exit {rc}")
    print(f"{len(failures)} failed" if failures else "all live checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
