"""The checks of scripts/check-k8s that need to read the manifests (run by it, in its venv).

    check-k8s.py inspect OUT_DIR FILE...        CRD objects, dashboards, and how the pieces fit
    check-k8s.py split RENDERED.yaml OUT_DIR     split a rendered stream into built-in kinds / CRDs
    check-k8s.py image KUSTOMIZATION CARGO_TOML [--exact]
    check-k8s.py alerts RULES_FILE OPERATIONS_MD TEST_FILE...

Each prints `OK   ...` lines for what holds, `FAIL ...` lines on stderr for what does not, and
exits 1 when anything failed.
"""

import json
import os
import re
import sys
import tomllib
from urllib.parse import urlsplit

import yaml

# API groups of the custom resources the manifests use; kubernetes-validate has no schema for
# them, so they are checked here instead.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
IMAGE = "ghcr.io/sark-project/sark"

problems = []
passed = []
QUIET = os.environ.get("CHECK_K8S_QUIET") == "1"


def ok(what):
    passed.append(what)
    if not QUIET:
        print(f"OK   {what}")


def fail(what):
    problems.append(what)


def finish(label):
    if QUIET and not problems:
        print(f"OK   {label}: {len(passed)} checks")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


def is_crd(doc):
    return str(doc.get("apiVersion", "")).startswith(CRD_GROUPS)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- custom resources -------------------------------------------------------------------


def check_servicemonitor(name, doc):
    spec = doc.get("spec") or {}
    if not spec.get("selector"):
        fail(f"{name}: ServiceMonitor has no spec.selector")
    if not spec.get("endpoints"):
        fail(f"{name}: ServiceMonitor has no endpoints")
    for ep in spec.get("endpoints") or []:
        if not ep.get("port"):
            fail(f"{name}: ServiceMonitor endpoint without a port name")


def check_prometheusrule(name, doc, rule_groups):
    groups = (doc.get("spec") or {}).get("groups") or []
    if not groups:
        fail(f"{name}: PrometheusRule has no groups")
    for group in groups:
        for rule in group.get("rules") or []:
            if "alert" not in rule:
                continue
            labels = rule.get("labels") or {}
            notes = rule.get("annotations") or {}
            if labels.get("severity") not in ("critical", "warning", "info"):
                fail(f"{name}: alert {rule['alert']} has no severity label (critical, warning, info)")
            if not {"summary", "description", "runbook_url"} <= notes.keys():
                fail(f"{name}: alert {rule['alert']} lacks summary/description/runbook_url")
    rule_groups.extend(groups)


ISSUER_KINDS = ("selfSigned", "ca", "acme", "vault", "venafi")


def check_certmanager(name, doc):
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Certificate":
        for field in ("secretName", "issuerRef"):
            if not spec.get(field):
                fail(f"{name}: Certificate {doc['metadata']['name']} has no spec.{field}")
        if not (spec.get("issuerRef") or {}).get("name"):
            fail(f"{name}: Certificate {doc['metadata']['name']} has no spec.issuerRef.name")
        if not (spec.get("dnsNames") or spec.get("commonName") or spec.get("ipAddresses")):
            fail(f"{name}: Certificate {doc['metadata']['name']} names no subject (dnsNames, commonName)")
    elif kind in ("Issuer", "ClusterIssuer"):
        kinds = [k for k in ISSUER_KINDS if k in spec]
        if len(kinds) != 1:
            fail(f"{name}: {kind} {doc['metadata']['name']} must have exactly one of {', '.join(ISSUER_KINDS)}")
        if "ca" in spec and not (spec["ca"] or {}).get("secretName"):
            fail(f"{name}: {kind} {doc['metadata']['name']}: spec.ca has no secretName")
    else:
        fail(f"{name}: unexpected cert-manager kind {kind}")


def check_dashboards(name, doc, dashboard_rules, uids):
    for key, text in (doc.get("data") or {}).items():
        if not key.endswith(".json"):
            continue
        try:
            dash = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{name}: {key} is not valid JSON: {e}")
            continue
        panels = dash.get("panels") or []
        if not panels:
            fail(f"{name}: {key} has no panels")
        uid = dash.get("uid")
        if not uid:
            fail(f"{name}: {key} has no uid")
        elif uid in uids:
            fail(f"{name}: {key} has the uid {uid!r} of {uids[uid]}")
        else:
            uids[uid] = key
        ids = [p.get("id") for p in panels]
        if len(set(ids)) != len(ids):
            fail(f"{name}: {key} has panels with the same id")
        exprs = []
        for panel in panels:
            targets = panel.get("targets") or []
            if not targets:
                fail(f"{name}: {key}: panel {panel.get('title')!r} has no query")
            for target in targets:
                if target.get("expr"):
                    exprs.append(target["expr"])
        ok(f"{name}: {key} is valid JSON ({len(panels)} panels, {len(exprs)} queries)")
        # Record names unique across dashboards (promtool's lint refuses duplicates).
        stem = re.sub(r"\W", "_", key.removesuffix(".json"))
        dashboard_rules.append({
            "name": f"dashboard-queries:{key}",
            "rules": [{"record": f"dashboard_query:{stem}:{i}", "expr": e} for i, e in enumerate(exprs)],
        })


# --- how the pieces fit (on a set of objects with the StatefulSet) ---------------------------


def parse_quantity(value, binary=True):
    """Kubernetes quantity -> bytes (memory) or cores (cpu)."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def port_allowed(rules, port, protocol="TCP"):
    """Whether any rule (egress or ingress) lets `port` through."""
    for rule in rules:
        ports = rule.get("ports")
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != protocol:
                continue
            start = p.get("port")
            end = p.get("endPort", start)
            if start is None or (isinstance(start, int) and start <= port <= end):
                return True
    return False


DEFAULT_PORTS = {"ldap": 389, "ldaps": 636, "https": 443, "http": 80, "redis": 6379,
                 "rediss": 6379, "postgres": 5432, "postgresql": 5432}


def url_ports(key, value):
    """(host, port) pairs an endpoint setting makes SARK connect to."""
    if key in ("SARK_REDIS__URL",) and value.startswith("redis+sentinel://"):
        hosts = value[len("redis+sentinel://"):].split("/", 1)[0].split("@")[-1]
        out = []
        for hp in hosts.split(","):
            host, _, port = hp.rpartition(":") if ":" in hp else (hp, "", "")
            out.append((host or hp, int(port) if port else 26379))
        return out
    parts = urlsplit(value)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        fail(f"config: cannot tell the port of {key}={value!r}")
        return []
    return [(parts.hostname, port)]


ENDPOINT_KEYS = ("SARK_LDAP__URL", "SARK_OIDC__ISSUER", "SARK_SAML__IDP_METADATA_URL",
                 "SARK_SIEM__SPLUNK__URL", "SARK_SIEM__DATADOG__URL", "SARK_REDIS__URL",
                 "SARK_DATABASE__URL")


def argon2_mib(root):
    """Memory cost of one argon2 hash, read from the source (src/idp/password.rs)."""
    try:
        with open(os.path.join(root, "src/idp/password.rs")) as f:
            text = f.read()
    except OSError:
        return 19
    m = re.search(r"const MEMORY_KIB: u32 = ([0-9_ *]+);", text)
    if not m:
        fail("src/idp/password.rs: MEMORY_KIB not found; update scripts/check-k8s.py")
        return 19
    kib = 1
    for factor in m.group(1).replace("_", "").split("*"):  # e.g. "19 * 1024"
        kib *= int(factor)
    return kib / 1024


# Baseline the memory budget reserves besides argon2 (k8s/base/statefulset.yaml explains it).
BASELINE_MIB = 256


def check_fit(objects, root):
    by_kind = {}
    for d in objects:
        by_kind.setdefault(d["kind"], []).append(d)
    sts = (by_kind.get("StatefulSet") or [None])[0]
    if not sts:
        return
    pod = sts["spec"]["template"]["spec"]
    pod_labels = sts["spec"]["template"]["metadata"].get("labels") or {}
    sark = next(c for c in pod["containers"] if c["name"] == "sark")
    env = {e["name"]: e.get("value") for e in sark.get("env") or [] if "name" in e}
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in by_kind.get("ConfigMap", [])}
    config = {}
    for source in sark.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        if ref:
            if ref not in configmaps:
                fail(f"wiring: envFrom names the ConfigMap {ref}, which is not in the build")
            config.update(configmaps.get(ref, {}))
    config.update({k: v for k, v in env.items() if v is not None})
    ports = {p["name"]: p["containerPort"] for p in sark.get("ports") or []}
    checks = []

    # Lifecycle: rolling updates, scale-downs and evictions fit together.
    pdb = (by_kind.get("PodDisruptionBudget") or [None])[0]
    hpa = (by_kind.get("HorizontalPodAutoscaler") or [None])[0]
    if pdb and hpa:
        delay = int(env.get("SARK_HTTP__SHUTDOWN_DELAY_SECONDS") or 0)
        grace = int(env.get("SARK_HTTP__SHUTDOWN_GRACE_SECONDS") or 30)
        termination = int(pod.get("terminationGracePeriodSeconds", 30))
        ready = sark.get("readinessProbe") or {}
        detection = int(ready.get("periodSeconds", 10)) * int(ready.get("failureThreshold", 3))
        checks += [
            ("the StatefulSet leaves replicas to the HPA", "replicas" not in sts["spec"]),
            ("the startup probe asks /health (a node without its database starts degraded)",
             ((sark.get("startupProbe") or {}).get("httpGet") or {}).get("path") == "/health"),
            (f"the shutdown delay ({delay} s) outlasts readiness detection ({detection} s)", delay > detection),
            (f"delay + grace ({delay + grace} s) fit in terminationGracePeriodSeconds ({termination} s)",
             delay + grace < termination),
            ("the PDB allows one pod down at a time", (pdb.get("spec") or {}).get("maxUnavailable") == 1),
            ("the HPA keeps at least 4 members (a majority through a disruption plus a failure)",
             int(hpa["spec"].get("minReplicas") or 1) >= 4
             and int(hpa["spec"]["maxReplicas"]) >= int(hpa["spec"]["minReplicas"])),
        ]

    # The container as the image expects it.
    csc = sark.get("securityContext") or {}
    mounts = {m["mountPath"]: m for m in sark.get("volumeMounts") or []}
    checks += [
        ("the container runs `sark serve`", sark.get("args") == ["serve"] and not sark.get("command")),
        ("the container runs as 10001:10001",
         (csc.get("runAsUser"), csc.get("runAsGroup")) == (10001, 10001) and csc.get("runAsNonRoot") is True),
        ("the root filesystem is read-only", csc.get("readOnlyRootFilesystem") is True),
        (f"the data dir ({env.get('SARK_DATA_DIR')}) is a mounted volume",
         env.get("SARK_DATA_DIR") in mounts and not mounts[env["SARK_DATA_DIR"]].get("readOnly")),
        ("the image is " + IMAGE, re.split(r"[:@]", str(sark.get("image", "")))[0] == IMAGE),
    ]
    if os.environ.get("CHECK_K8S_RENDERED") == "1":
        checks.append(("the rendered image has a tag or digest", re.search(r":[\w.-]+$|@sha256:", str(sark.get("image", ""))) is not None))
    spread = {c.get("topologyKey") for c in pod.get("topologySpreadConstraints") or []}
    checks.append(("pods spread over zones and machines",
                   {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= spread))

    # Memory fits the argon2 pool: SARK_AUTH__PASSWORD_HASH_CONCURRENCY hashes at once, else
    # 2 x CPUs (the CPU limit rounded down, what the process sees); each takes MEMORY_KIB.
    limits = (sark.get("resources") or {}).get("limits") or {}
    requests = (sark.get("resources") or {}).get("requests") or {}
    configured = env.get("SARK_AUTH__PASSWORD_HASH_CONCURRENCY")
    if not configured and "cpu" not in limits:
        fail("resources: neither SARK_AUTH__PASSWORD_HASH_CONCURRENCY nor a CPU limit bounds the argon2 pool")
    else:
        pool = int(configured) if configured else 2 * max(1, int(parse_quantity(limits["cpu"])))
        per = argon2_mib(root)
        need = BASELINE_MIB + pool * per
        limit = parse_quantity(limits.get("memory", 0)) / 2**20
        request = parse_quantity(requests.get("memory", 0)) / 2**20
        checks += [
            (f"memory limit {limit:.0f} MiB >= baseline {BASELINE_MIB} + argon2 pool {pool} x {per:g} MiB = {need:.0f} MiB",
             limit >= need),
            (f"memory request {request:.0f} MiB covers that peak ({need:.0f} MiB)", request >= need),
            ("glibc returns argon2's blocks on free (MALLOC_MMAP_THRESHOLD_ <= 4 MiB)",
             0 < int(env.get("MALLOC_MMAP_THRESHOLD_") or 0) <= 4 * 2**20),
        ]

    # Management listener: /metrics there, scraped there, reachable from monitoring only.
    mgmt = env.get("SARK_HTTP__MANAGEMENT_BIND")
    services = by_kind.get("Service", [])
    checks.append(("SARK_HTTP__MANAGEMENT_BIND is set", bool(mgmt)))
    if mgmt:
        mport = int(mgmt.rsplit(":", 1)[1])
        checks.append((f"container port `management` is {mport}, the management bind's port",
                       ports.get("management") == mport))
        for svc in services:
            targets = {p.get("targetPort") for p in svc["spec"].get("ports") or []}
            exposes = "management" in targets or mport in targets
            public = svc["spec"].get("clusterIP") != "None"
            if public and exposes:
                fail(f"wiring: the client-facing Service {svc['metadata']['name']} exposes the management port")
        for sm in by_kind.get("ServiceMonitor", []):
            sel = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
            chosen = [s for s in services if selects(sel, s["metadata"].get("labels") or {})]
            if len(chosen) != 1:
                fail(f"wiring: ServiceMonitor {sm['metadata']['name']} selects {len(chosen)} Services, not 1")
                continue
            svc = chosen[0]
            by_name = {p.get("name"): p for p in svc["spec"].get("ports") or []}
            for ep in sm["spec"].get("endpoints") or []:
                sp = by_name.get(ep.get("port"))
                checks.append((f"ServiceMonitor scrapes {svc['metadata']['name']}:{ep.get('port')}, "
                               "the container's management port",
                               sp is not None and sp.get("targetPort") in ("management", mport)
                               and ep.get("path", "/metrics") == "/metrics"))
        policies = [p for p in by_kind.get("NetworkPolicy", [])
                    if selects((p["spec"].get("podSelector") or {}).get("matchLabels"), pod_labels)]
        rules = [r for p in policies for r in p["spec"].get("ingress") or []]
        opening = [r for r in rules if port_allowed([r], mport)]
        only_monitoring = bool(opening) and all(
            r.get("from") and all(
                set(f) == {"namespaceSelector"}
                and (f["namespaceSelector"].get("matchLabels") or {}) == {"kubernetes.io/metadata.name": "monitoring"}
                for f in r["from"])
            for r in opening)
        checks.append((f"ingress to {mport} comes from the monitoring namespace only", only_monitoring))

    # Egress for what the configuration turns on: never a silent block.
    policies = [p for p in by_kind.get("NetworkPolicy", [])
                if selects((p["spec"].get("podSelector") or {}).get("matchLabels"), pod_labels)
                and "Egress" in (p["spec"].get("policyTypes") or [])]
    egress = [r for p in policies for r in p["spec"].get("egress") or []]
    if policies:
        needed = [("DNS", 53, "UDP"), ("DNS", 53, "TCP")]
        for key in ENDPOINT_KEYS:
            if config.get(key):
                needed += [(f"{key} ({host})", port, "TCP") for host, port in url_ports(key, config[key])]
        if config.get("SARK_DATABASE__URL_FILE"):
            needed.append(("SARK_DATABASE__URL_FILE (PostgreSQL, port 5432 assumed)", 5432, "TCP"))
        if config.get("SARK_CLUSTER__SEEDS"):
            for seed in config["SARK_CLUSTER__SEEDS"].split(","):
                needed.append((f"cluster seed {seed}", int(seed.rsplit(":", 1)[1]), "TCP"))
        missing = [f"{what} -> {proto} {port}" for what, port, proto in needed
                   if not port_allowed(egress, port, proto)]
        checks.append((f"egress is open for every endpoint the configuration names ({len(needed)} checked)",
                       not missing))
        for m in missing:
            fail(f"egress: no NetworkPolicy opens {m}")

    # Files the configuration names are mounted.
    volumes = {v["name"]: v for v in pod.get("volumes") or []}

    def secret_of(path):
        """(secret name, file) of the Secret volume that holds `path`, or None."""
        for mpath, m in mounts.items():
            if path.startswith(mpath.rstrip("/") + "/"):
                rel = path[len(mpath.rstrip("/")) + 1:]
                vol = volumes.get(m["name"]) or {}
                if "secret" in vol:
                    items = vol["secret"].get("items")
                    if items is None or rel in [i.get("path") for i in items]:
                        return vol["secret"]["secretName"], rel
                    return None
                return ("(not a Secret)", rel)
        return None

    file_keys = [k for k in config if k.startswith("SARK_") and k.endswith("_FILE")]
    unmounted = [k for k in file_keys if config[k] and secret_of(config[k]) is None]
    checks.append((f"every *_FILE setting points into a mounted volume ({len(file_keys)} checked)", not unmounted))
    for k in unmounted:
        fail(f"wiring: {k}={config[k]} is not a file of any mounted volume")

    # Mutual TLS between nodes: all three files, and a certificate that fits.
    tls_keys = ("SARK_CLUSTER__TLS_CERT_FILE", "SARK_CLUSTER__TLS_KEY_FILE", "SARK_CLUSTER__TLS_CA_FILE")
    present = [k for k in tls_keys if config.get(k)]
    if present:
        checks.append(("cluster TLS: certificate, key and CA are all set", len(present) == 3))
        secrets = {secret_of(config[k])[0] for k in present if secret_of(config[k])}
        server_name = config.get("SARK_CLUSTER__TLS_SERVER_NAME") or "sark-cluster"
        certs = [c for c in by_kind.get("Certificate", []) if c["spec"].get("secretName") in secrets]
        issuers = {(d["kind"], d["metadata"]["name"]) for d in by_kind.get("Issuer", []) + by_kind.get("ClusterIssuer", [])}
        for cert in certs:
            spec = cert["spec"]
            ref = spec.get("issuerRef") or {}
            checks += [
                (f"Certificate {cert['metadata']['name']} carries the cluster TLS server name {server_name}",
                 server_name in (spec.get("dnsNames") or [])),
                (f"Certificate {cert['metadata']['name']} is for both server and client auth",
                 {"server auth", "client auth"} <= set(spec.get("usages") or [])),
                (f"Certificate {cert['metadata']['name']}'s issuer is in the build",
                 (ref.get("kind", "Issuer"), ref.get("name")) in issuers or ref.get("kind") == "ClusterIssuer"),
            ]
        if not certs:
            ok(f"cluster TLS from a Secret made outside the build ({', '.join(sorted(secrets))})")

    for what, holds in checks:
        if holds:
            ok(what)
        else:
            fail(f"not so: {what}")


def cmd_inspect(out, files, root):
    plain, crd = [], []
    rule_groups, dashboard_rules, uids = [], [], {}
    objects = []
    for path in files:
        name = os.path.relpath(path)
        try:
            docs = load_all(path)
        except yaml.YAMLError as e:
            fail(f"{name}: not valid YAML: {e}")
            continue
        if not docs:
            fail(f"{name}: no YAML documents")
            continue
        if any(d.get("kind") in ("Kustomization", "Component") for d in docs):
            continue
        objects += docs
        kinds = {is_crd(d) for d in docs}
        if kinds == {True}:
            crd.append(path)
            for d in docs:
                if not (d.get("metadata") or {}).get("name"):
                    fail(f"{name}: {d.get('kind')} without metadata.name")
                if d.get("kind") == "ServiceMonitor":
                    check_servicemonitor(name, d)
                elif d.get("kind") == "PrometheusRule":
                    check_prometheusrule(name, d, rule_groups)
                elif str(d.get("apiVersion", "")).startswith("cert-manager.io/"):
                    check_certmanager(name, d)
                else:
                    fail(f"{name}: unexpected CRD kind {d.get('kind')}")
            ok(f"{name}: parses as YAML ({', '.join(d['kind'] for d in docs)})")
        elif kinds == {False}:
            plain.append(path)
        else:
            fail(f"{name}: mixes CRD objects with built-in kinds; keep them in separate files")
        for d in docs:
            labels = (d.get("metadata") or {}).get("labels") or {}
            if d.get("kind") == "ConfigMap" and labels.get("grafana_dashboard") == "1":
                check_dashboards(name, d, dashboard_rules, uids)
    check_fit(objects, root)
    with open(os.path.join(out, "plain.txt"), "w") as f:
        f.write("".join(p + "\n" for p in plain))
    with open(os.path.join(out, "crd.txt"), "w") as f:
        f.write("".join(p + "\n" for p in crd))
    if rule_groups:
        with open(os.path.join(out, "prometheus-rules.yml"), "w") as f:
            yaml.safe_dump({"groups": rule_groups}, f, sort_keys=False)
    if dashboard_rules:
        with open(os.path.join(out, "dashboard-queries.yml"), "w") as f:
            yaml.safe_dump({"groups": dashboard_rules}, f, sort_keys=False)


def cmd_split(rendered, out):
    docs = load_all(rendered)
    crd = [x for x in docs if is_crd(x)]
    plain = [x for x in docs if not is_crd(x)]
    with open(os.path.join(out, "rendered.yaml"), "w") as f:
        yaml.safe_dump_all(plain, f, sort_keys=False)
    with open(os.path.join(out, "rendered-crds.yaml"), "w") as f:
        yaml.safe_dump_all(crd, f, sort_keys=False)
    bad = [f"{x['kind']}/{x['metadata']['name']}" for x in docs
           if x["kind"] != "Namespace" and not x["metadata"].get("namespace")]
    ok(f"rendered {len(docs)} objects ({len(crd)} custom resources)")
    if bad:
        fail(f"rendered objects without a namespace: {', '.join(bad)}")


def cmd_image(kustomization, cargo, exact):
    with open(cargo, "rb") as f:
        version = tomllib.load(f)["workspace"]["package"]["version"]
    with open(kustomization) as f:
        images = [i for i in (yaml.safe_load(f).get("images") or []) if i.get("name") == IMAGE]
    name = os.path.relpath(kustomization)
    if not images:
        if exact:
            fail(f"{name}: no images: entry for {IMAGE}")
        return
    for image in images:
        tag = str(image.get("newTag", ""))
        if exact:
            good = tag == version
            want = f"the workspace version {version}"
        else:
            good = tag == version or re.fullmatch(re.escape(version) + r"-[0-9a-f]{7,40}", tag) is not None
            want = f"{version} or {version}-<git short sha>"
        if good:
            ok(f"{name}: image tag {tag} is {want}")
        else:
            fail(f"{name}: image tag {tag!r} is not {want} (Cargo.toml)")


def anchors(markdown):
    """GitHub's anchors of the headings of a Markdown file."""
    out = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"#{1,6} +(.*)", line)
        if m and not in_code:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def cmd_alerts(rules_file, operations, tests):
    with open(rules_file) as f:
        groups = yaml.safe_load(f)["groups"]
    alerts = [r for g in groups for r in g.get("rules") or [] if "alert" in r]
    with open(operations) as f:
        known = anchors(f.read())
    fired, quiet = set(), set()
    for path in tests:
        with open(path) as f:
            for test in yaml.safe_load(f).get("tests") or []:
                for check in test.get("alert_rule_test") or []:
                    (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = [a["alert"] for a in alerts]
    if len(set(names)) != len(names):
        fail("alerts: two alerts share a name")
    for alert in alerts:
        name = alert["alert"]
        url = (alert.get("annotations") or {}).get("runbook_url", "")
        m = re.fullmatch(r"https://\S+/docs/operations\.md#([\w-]+)", url)
        if not m:
            fail(f"alert {name}: runbook_url {url!r} is not a link to docs/operations.md#<anchor>")
        elif m.group(1) not in known:
            fail(f"alert {name}: docs/operations.md has no heading for #{m.group(1)}")
        if name not in fired:
            fail(f"alert {name}: no unit test makes it fire")
        if name not in quiet:
            fail(f"alert {name}: no unit test shows it quiet")
    unknown = (fired | quiet) - set(names)
    if unknown:
        fail(f"unit tests name alerts that do not exist: {', '.join(sorted(unknown))}")
    if not problems:
        ok(f"{len(alerts)} alerts: each has a runbook section, fires in a test and stays quiet in one")


def main(argv):
    cmd, args = argv[1], argv[2:]
    root = os.environ.get("SARK_ROOT", ".")
    if cmd == "inspect":
        cmd_inspect(args[0], args[1:], root)
    elif cmd == "split":
        cmd_split(args[0], args[1])
    elif cmd == "image":
        cmd_image(args[0], args[1], "--exact" in args[2:])
    elif cmd == "alerts":
        cmd_alerts(args[0], args[1], args[2:])
    else:
        sys.exit(f"check-k8s.py: unknown command {cmd}")
    finish(os.environ.get("CHECK_K8S_LABEL", cmd))


if __name__ == "__main__":
    main(sys.argv)
