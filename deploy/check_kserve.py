"""Checks KServe manifests against KServe's own models (its Python SDK, the `kserve`
package, whose classes are generated from KServe's OpenAPI schema; the Kubernetes types they
embed come from the `kubernetes` package): every field of each document must be one its
class declares, of the declared type, and the classes' own checks (required fields, allowed
values) must pass.

    python3 check_kserve.py FILE.yaml...
"""

import re
import sys
from importlib.metadata import version

import kserve
import kubernetes.client.models as k8s_models
import yaml

KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def build(value, type_name, path, problems):
    """`value` as an instance of the SDK type `type_name`; what does not fit goes to `problems`."""
    if type_name in ("object", "datetime"):
        return value
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]):
            problems.append(f"{path}: {value!r} is not a {type_name}")
        return value
    # Both notations of the generators: `list[X]`, `dict(str, X)` and `List[X]`, `Dict[str, X]`.
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            problems.append(f"{path}: not a list")
            return value
        return [build(v, m[1], f"{path}/{i}", problems) for i, v in enumerate(value)]
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict):
            problems.append(f"{path}: not a map")
            return value
        inner = m[1] or m[2]
        return {k: build(v, inner, f"{path}/{k}", problems) for k, v in value.items()}
    cls = getattr(kserve.models, type_name, None) or getattr(k8s_models, type_name)
    if not isinstance(value, dict):
        problems.append(f"{path}: not an object ({type_name})")
        return value
    by_json = {json: attr for attr, json in cls.attribute_map.items()}
    kwargs = {}
    for key, field in value.items():
        if key not in by_json:
            problems.append(f"{path}/{key}: not a field of {type_name}")
            continue
        attr = by_json[key]
        kwargs[attr] = build(field, cls.openapi_types[attr], f"{path}/{key}", problems)
    try:
        return cls(**kwargs)
    except ValueError as error:  # a required field is missing, or a value is not allowed
        problems.append(f"{path or '/'}: {error}")


def main():
    failed = False
    for name in sys.argv[1:]:
        with open(name, encoding="utf-8") as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        for document in documents:
            kind = KINDS.get((document.get("apiVersion"), document.get("kind")))
            where = f"{name}: {document.get('kind')} {document.get('metadata', {}).get('name')}"
            if kind is None:
                print(f"{where}: not a KServe kind this check knows")
                failed = True
                continue
            problems = []
            build(document, kind, "", problems)
            for problem in problems:
                print(f"{where}: {problem}")
            failed |= bool(problems)
            if not problems:
                print(f"{where}: valid ({kind}, kserve {version('kserve')})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
