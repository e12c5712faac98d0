#!/usr/bin/env python3
"""The Grafana dashboard (deploy/grafana/cordon-dashboard.json) against a
real Cordon's /metrics: every metric a panel queries must be exposed, and
every label a query filters or groups on must be a label the metric has.

    tests/sdk/dashboard_metrics.py --bin <path to cordon>

First checks the dashboard file on its own (it parses, panel ids are unique,
every panel has a Prometheus datasource and a query). Then starts
`cordon serve`, stores, searches, reads one memory, sends refused tokens
until the address is locked out, and scrapes /metrics. A metric is matched
by family: `_bucket`, `_sum` and `_count` name the histogram they belong to.
Labels are checked only for metrics with samples in the scrape (a labelled
counter shows no sample until it first counts); `instance` and `job` are
added by Prometheus at scrape time and always allowed.

Standard library only. Exits non-zero on the first failed check; a missing
metric fails once, naming every missing one. Run by scripts/sdk-tests.
"""

import argparse
import json
import os
import re
import urllib.error
import urllib.request

from cordon_server import CordonServer, check

DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "..", "..", "deploy", "grafana", "cordon-dashboard.json")
# Labels Prometheus attaches to every scraped sample.
SCRAPE_LABELS = {"instance", "job"}
SUFFIXES = ("_bucket", "_sum", "_count")
METRIC = re.compile(r"\bcordon_[A-Za-z0-9_:]*")
# A selector's matchers: `name{a="x",b=~"y"}`.
SELECTOR = re.compile(r"\b(cordon_[A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+")
LABEL_NAME = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"')


def all_panels(panels):
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def check_dashboard(path: str):
    """Checks the file alone; returns [(panel title, expr)] and variable queries."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as e:
        check(False, f"{path} parses as JSON ({e})")
    check(isinstance(dashboard, dict) and isinstance(dashboard.get("panels"), list),
          "the dashboard parses as JSON and has a panel list")
    check(dashboard.get("uid") == "cordon" and 36 <= dashboard.get("schemaVersion", 0) <= 41,
          f"uid `cordon`, schemaVersion {dashboard.get('schemaVersion')}")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    panels = list(all_panels(dashboard["panels"]))
    ids = [p.get("id") for p in panels]
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    check(all(isinstance(i, int) for i in ids) and not dupes,
          f"{len(ids)} panel ids, all integers and unique" + (f" (repeated: {dupes})" if dupes else ""))

    def datasource_ok(ds) -> bool:
        if not isinstance(ds, dict) or ds.get("type") != "prometheus" or not ds.get("uid"):
            return False
        uid = ds["uid"]
        name = uid[2:-1] if uid.startswith("${") and uid.endswith("}") else None
        return name is None or variables.get(name, {}).get("type") == "datasource"

    exprs, bad_grid, overlaps, bad_ds, no_query, bad_refs = [], [], [], [], [], []
    cells = {}
    for panel in panels:
        title = panel.get("title", f"panel {panel.get('id')}")
        grid = panel.get("gridPos", {})
        x, y, w, h = (grid.get(k) for k in ("x", "y", "w", "h"))
        if not (all(isinstance(v, int) for v in (x, y, w, h)) and x >= 0 and w > 0 and h > 0 and x + w <= 24):
            bad_grid.append(title)
            continue
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            other = cells.setdefault(cell, title)
            if other != title and (other, title) not in overlaps:
                overlaps.append((other, title))
        if panel.get("type") == "row":
            continue
        if not datasource_ok(panel.get("datasource")):
            bad_ds.append(title)
        targets = [t for t in panel.get("targets", []) if str(t.get("expr", "")).strip()]
        if not targets:
            no_query.append(title)
        bad_ds += [f"{title} / {t.get('refId')}" for t in targets
                   if not datasource_ok(t.get("datasource", panel.get("datasource")))]
        refs = [t.get("refId") for t in panel.get("targets", [])]
        if len(set(refs)) != len(refs):
            bad_refs.append(title)
        exprs += [(title, t["expr"]) for t in targets]
    check(not bad_grid, "every panel has a gridPos inside the 24 columns"
          + (f" (not: {bad_grid})" if bad_grid else ""))
    check(not overlaps, "no two panels overlap" + (f" ({overlaps})" if overlaps else ""))
    shown = [p for p in panels if p.get("type") != "row"]
    check(not bad_ds, f"all {len(shown)} panels and their targets have a Prometheus datasource"
          + (f" (not: {bad_ds})" if bad_ds else ""))
    check(not no_query, f"every panel has a target with an expr ({len(exprs)} exprs)"
          + (f" (none: {no_query})" if no_query else ""))
    check(not bad_refs, "refIds are unique within each panel" + (f" (not: {bad_refs})" if bad_refs else ""))

    for name, variable in variables.items():
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if variable.get("type") == "query":
            check(datasource_ok(variable.get("datasource")), f"variable ${name}: a Prometheus datasource")
            exprs.append((f"variable ${name}", query))
    return exprs


def request(server, method, path, token=None, body=None):
    """(status, parsed JSON body or None)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def exercise(server) -> str:
    """Makes the requests whose metrics the dashboard shows; returns the scrape."""
    token = server.token("acme", "dashboard-user")
    status, stored = request(server, "POST", "/v1/memories", token, {"text": "The cat sits on the mat"})
    check(status == 201 and len((stored or {}).get("ids", [])) == 1, f"store: 201 with one id (got {status})")
    memory_id = stored["ids"][0]
    status, found = request(server, "POST", "/v1/memories/search", token, {"query": "a cat on a mat"})
    check(status == 200 and (found or {}).get("results"), f"search: 200 with results (got {status})")
    status, _ = request(server, "GET", f"/v1/memories/{memory_id}", token)
    check(status == 200, f"get one: 200 (got {status})")
    # The server runs with CORDON_LOCKOUT_THRESHOLD=2: the second refused
    # token locks the address out, the third is refused by the lockout.
    statuses = [request(server, "POST", "/v1/memories/search", "not-a-token", {"query": "x"})[0]
                for _ in range(3)]
    check(statuses == [401, 401, 429], f"refused tokens: 401, 401, then 429 locked out (got {statuses})")
    # The real token still works: only the address is locked out.
    status, _ = request(server, "POST", "/v1/memories/search", token, {"query": "cat"})
    check(status == 200, f"search after the lockout, good token: 200 (got {status})")

    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=30) as response:
        exposition = response.read().decode()
    check(f"route=\"/v1/memories/{{id}}\"" in exposition and memory_id not in exposition,
          "routes are labelled by template: /v1/memories/{id} present, the memory id absent")
    return exposition


def parse_exposition(text: str):
    """({family: type}, {sample name: set of label names})."""
    types, labels = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            if match:
                names = set(LABEL_NAME.findall(match.group(2) or ""))
                labels.setdefault(match.group(1), set()).update(names)
    return types, labels


def family_of(name: str, types) -> str:
    if name in types:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in types:
            return name[: -len(suffix)]
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def family_labels(family: str, labels):
    """Label names over the family's samples, or None when it has no sample."""
    found = None
    for name in (family, *(family + s for s in SUFFIXES)):
        if name in labels:
            found = (found or set()) | labels[name]
    return found


def check_metrics(exprs, exposition: str) -> None:
    types, labels = parse_exposition(exposition)
    referenced = {}
    for title, expr in exprs:
        for name in METRIC.findall(expr):
            referenced.setdefault(family_of(name, types), set()).add(title)

    missing = sorted(f for f in referenced if f not in types)
    for family in sorted(referenced):
        if family in types:
            check(True, f"{family} is exposed ({types[family]}), used by: {', '.join(sorted(referenced[family]))}")
        else:
            print(f"missing: {family} (used by {', '.join(sorted(referenced[family]))})")

    used, wrong, unchecked = {}, [], set()
    for title, expr in exprs:
        families = [family_of(n, types) for n in METRIC.findall(expr)]
        # Matchers inside each selector, against that selector's metric.
        for name, body in SELECTOR.findall(expr):
            family = family_of(name, types)
            have = family_labels(family, labels)
            if have is None:
                unchecked.add(family)
                continue
            for label in MATCHER.findall(body):
                used.setdefault(family, set()).add(label)
                if label not in have | SCRAPE_LABELS:
                    wrong.append(f"{title!r}: {name} has no label `{label}` (it has {sorted(have)})")
        # Grouping labels, against the labels of the expression's metrics.
        have_all = [family_labels(f, labels) for f in families]
        if not families or any(h is None for h in have_all):
            continue
        union = set().union(*have_all) | SCRAPE_LABELS
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                for family in families:
                    used.setdefault(family, set()).add(label)
                if label not in union:
                    wrong.append(f"{title!r}: groups by `{label}`, which {sorted(set(families))} lack")
    for family in sorted(used):
        have = family_labels(family, labels)
        if used[family] <= have | SCRAPE_LABELS:
            check(True, f"{family}: queried by {', '.join(sorted(used[family]))}; "
                        f"exposed with {', '.join(sorted(have)) or 'no labels'} (+ scrape labels)")
    check(not wrong, "every label a query filters or groups on is a label of its metric"
          + ("".join(f"\n  {w}" for w in wrong)))
    for family in sorted(unchecked - set(missing)):
        print(f"note: {family} has no sample in this scrape; its labels were not checked")

    what = f"every metric the dashboard queries is in /metrics ({len(referenced)} families)"
    if missing:
        what = f"every metric the dashboard queries is in /metrics; missing: {', '.join(missing)}"
    check(not missing, what)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--dashboard", default=DASHBOARD)
    args = parser.parse_args()

    exprs = check_dashboard(args.dashboard)
    extra_env = {"CORDON_LOCKOUT_THRESHOLD": "2", "CORDON_AUDIT": "off"}
    with CordonServer(args.bin, args.model_dir, extra_env) as server:
        exposition = exercise(server)
    check_metrics(exprs, exposition)


if __name__ == "__main__":
    main()
