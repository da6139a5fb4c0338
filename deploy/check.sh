#!/usr/bin/env bash
# Validates every manifest of deploy/ offline, after rendering: the kustomize base and each
# overlay (kubectl kustomize, from Debian's kubernetes-client) against Kubernetes' own schemas
# in strict mode (unknown fields fail), the KServe kinds against KServe's SDK, and the
# autoscaling metric and the Grafana dashboard's queries against the metrics the server
# exports (and the queries against a PromQL parser). The validators come from PyPI
# (requirements.txt) into a virtualenv kept between runs.
#
#   deploy/check.sh            (VENV=... to choose the virtualenv)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null || { echo "needs kubectl: apt-get install kubernetes-client" >&2; exit 1; }
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.32.0}
VENV=${VENV:-${HOME}/.cache/sluice-ci/deploy-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
RENDERED=$(mktemp -d)
trap 'rm -rf "$RENDERED"' EXIT

for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
    name=$(basename "$dir")
    kubectl kustomize "$dir" > "$RENDERED/$name.yaml"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$RENDERED/$name.yaml"
    echo "kubernetes $KUBERNETES_VERSION, strict: $dir ($(grep -c '^kind:' "$RENDERED/$name.yaml") resources) valid"
done
"$VENV/bin/python" deploy/check_kserve.py deploy/kserve/*.yaml

# The HPA scales on a metric that prometheus-adapter's rule serves and the server exports.
"$VENV/bin/python" - <<'PY'
import pathlib, re, sys, yaml
hpa = yaml.safe_load(pathlib.Path("deploy/kubernetes/base/hpa.yaml").read_text())
rules = yaml.safe_load(pathlib.Path("deploy/kubernetes/prometheus-adapter.yaml").read_text())["rules"]
exported = set(re.findall(r'"(sluice_[a-z_]+)"', pathlib.Path("crates/serving/src/metrics.rs").read_text()))
served = {rule["name"]["as"]: re.match(r"(\w+)\{", rule["seriesQuery"])[1] for rule in rules}
for metric in hpa["spec"]["metrics"]:
    name = metric["pods"]["metric"]["name"]
    if name not in served:
        sys.exit(f"the HPA's metric {name} is not one prometheus-adapter's rules serve")
    if served[name] not in exported:
        sys.exit(f"prometheus-adapter's rule for {name} queries {served[name]}, which sluice does not export")
    print(f"HPA metric {name}: served by prometheus-adapter's rule from {served[name]}, which sluice exports")
PY

# Every query of the Grafana dashboard parses as PromQL and uses only metrics the server exports.
"$VENV/bin/python" - <<'PY'
import json, pathlib, re, sys
import promql_parser
exported = set(re.findall(r'"(sluice_[a-z_]+)"', pathlib.Path("crates/serving/src/metrics.rs").read_text()))
dashboard = json.loads(pathlib.Path("deploy/grafana/sluice-dashboard.json").read_text())
queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
used = set()
for query in queries:
    # Grafana's variables, as Grafana substitutes them.
    promql = query.replace("$__rate_interval", "1m").replace("$model", ".*")
    if not promql.startswith("label_values("):
        try:
            promql_parser.parse(promql)
        except Exception as error:
            sys.exit(f"the dashboard's query does not parse ({error}): {query}")
    for name in re.findall(r"\b(sluice_[a-z_]+)", promql):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base not in exported and name not in exported:
            sys.exit(f"the dashboard queries {name}, which sluice does not export")
        used.add(base if base in exported else name)
print(f"Grafana dashboard: {len(queries)} queries parse, using {len(used)} of the {len(exported)} metrics sluice exports")
PY
