#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline, as an API server would.

    validate.py --kube-version 1.35.0 --crds DIR_OR_FILE [...] MANIFEST.yaml [...]

Every document of every manifest file is checked:
  * built-in kinds against the Kubernetes OpenAPI schemas that PyPI `kubernetes-validate` ships
    (strict: unknown fields are errors, as `kubectl apply --validate=strict` makes them);
  * kinds defined by the given CRDs (apiextensions.k8s.io/v1) against their openAPIV3Schema, converted
    to JSON Schema: structural defaults are applied first (the API server defaults before validating),
    fields not in the schema are errors unless x-kubernetes-preserve-unknown-fields, `nullable`,
    x-kubernetes-int-or-string, list-type set/map uniqueness and the CEL rules in
    x-kubernetes-validations are honoured (CEL through the small evaluator below: it knows the subset
    of CEL that such rules use and reports any expression it cannot evaluate as an error, never as a
    pass);
  * monitoring.coreos.com/v1 ServiceMonitor against the subset of the Prometheus Operator's schema that
    this chart can render (no CRD for it ships offline).
A kind that none of these knows is an error: nothing passes unvalidated.

Options on top of validity:
  --expect Kind=N        the manifests hold exactly N objects of that kind (repeatable)
  --require-hardened     every pod template runs as non-root uid 65532 with a read-only root filesystem,
                         all capabilities dropped, no privilege escalation, seccomp RuntimeDefault,
                         resource requests and liveness/readiness probes; no RBAC rule uses `*` or the
                         escalate/bind/impersonate verbs
  --values-schema FILE   with --check-crds: every field the chart's values.schema.json accepts under
                         addressSpace.spec and tenants[].spec exists in the CRD with the same type
                         and enum values (values that render into a custom resource cannot drift from it)
  --check-crds           check the CRDs (--crds) against K8S-CONTRACT.md's names (group, kinds, plural,
                         short names, scope, status subresource, printer columns, served/storage
                         version) and that every copy of a CRD (crds/ and charts/ferry/crds/) is the same

Exit status 0 when everything is valid, 1 otherwise; one line per problem on stderr.
"""

import argparse
import copy
import os
import re
import sys

import jsonschema
import kubernetes_validate
import yaml


class Problem(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_documents(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    docs = []
    for index, doc in enumerate(yaml.safe_load_all(text)):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise Problem(f"{path}: document {index} is not a mapping")
        docs.append(doc)
    return docs


def crd_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.endswith((".yaml", ".yml")):
                    files.append(os.path.join(path, name))
        elif os.path.isfile(path):
            files.append(path)
    return files


def load_crds(paths):
    """(group/version, kind) -> (crd name, openAPIV3Schema)"""
    crds = {}
    for path in crd_files(paths):
        for doc in load_documents(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc.get("spec", {})
            for version in spec.get("versions", []):
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                if schema is None:
                    raise Problem(f"{path}: CRD {doc['metadata']['name']} version {version.get('name')} has no openAPIV3Schema")
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                crds[key] = (doc["metadata"]["name"], schema)
    return crds


# --------------------------------------------------------------------------------------------
# CRD openAPIV3Schema -> JSON Schema
# --------------------------------------------------------------------------------------------

# Keys of the structural schema that JSON Schema understands as they are.
PASS_THROUGH = {
    "type", "properties", "required", "enum", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "multipleOf", "items", "additionalProperties", "allOf",
    "anyOf", "oneOf", "not", "description", "default", "title", "example", "format",
}
# OpenAPI formats the API server checks; others (int32, int64, double, byte...) are informational.
KNOWN_FORMATS = {"date-time"}


def convert(schema, path="$"):
    """Returns a JSON Schema (draft 2020-12 compatible) for one structural schema node."""
    if not isinstance(schema, dict):
        raise Problem(f"schema node {path} is not an object")
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out["properties"] = {name: convert(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out["items"] = convert(value, f"{path}[]")
        elif key == "additionalProperties":
            out["additionalProperties"] = convert(value, f"{path}.*") if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(sub, f"{path}.{key}") for sub in value]
        elif key == "not":
            out["not"] = convert(value, f"{path}.not")
        elif key == "format":
            if value in KNOWN_FORMATS:
                out["format"] = value
        elif key in PASS_THROUGH:
            out[key] = value
        elif key in ("nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                     "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                     "x-kubernetes-map-type", "x-kubernetes-embedded-resource", "externalDocs"):
            continue  # handled below or by the post-pass
        else:
            raise Problem(f"schema node {path}: unsupported key {key!r} in a CRD schema")

    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        rest = {k: v for k, v in out.items() if k not in ("description", "default")}
        out = {"anyOf": [{"type": "integer"}, {"type": "string", **{k: v for k, v in rest.items() if k != "anyOf"}}]}
    # Structural schemas: an object's unknown fields are refused (kubectl's strict field validation)
    # unless the schema preserves them or describes them with additionalProperties.
    is_object = schema.get("type") == "object"
    if is_object and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        if path.endswith(".metadata") and path.count(".") == 1:
            pass  # ObjectMeta is checked separately
        else:
            out["additionalProperties"] = False
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(schema, value):
    """Structural defaulting: missing fields get their `default`, recursively (like the API server)."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in list(value):
                if name not in (schema.get("properties") or {}):
                    value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def post_checks(schema, value, path, problems):
    """list-type map key uniqueness and CEL rules, walking the schema alongside the value."""
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []) or []:
        expression = rule.get("rule", "")
        if "oldSelf" in expression:
            continue  # transition rules need the previous object; a create has none
        try:
            ok = Cel(expression).evaluate({"self": value})
        except CelError as e:
            problems.append(f"{path}: CEL rule {expression!r} could not be evaluated: {e}")
            continue
        if ok is not True:
            message = rule.get("message") or rule.get("messageExpression") or f"failed rule: {expression}"
            problems.append(f"{path}: {message} (CEL rule {expression!r})")
    if schema.get("x-kubernetes-list-type") == "map" and isinstance(value, list):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in value:
            key = tuple(repr(item.get(k)) for k in keys) if isinstance(item, dict) else repr(item)
            if key in seen:
                problems.append(f"{path}: duplicate entry for map keys {keys}: {key}")
            seen.add(key)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                post_checks(sub, value[name], f"{path}.{name}", problems)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in props:
                    post_checks(extra, item, f"{path}.{name}", problems)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            post_checks(schema["items"], item, f"{path}[{index}]", problems)


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_custom(doc, crd_name, schema):
    problems = []
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    if not DNS_SUBDOMAIN.match(name or "") or len(name) > 253:
        problems.append(f"metadata.name {name!r} is not a DNS subdomain")
    defaulted = apply_defaults(schema, copy.deepcopy(doc))
    json_schema = convert(schema)
    # Every object has apiVersion, kind and metadata, whether the CRD's schema lists them or not.
    root = json_schema.setdefault("properties", {})
    root.setdefault("apiVersion", {"type": "string"})
    root.setdefault("kind", {"type": "string"})
    root.setdefault("metadata", {"type": "object"})
    validator = jsonschema.Draft202012Validator(json_schema, format_checker=jsonschema.FormatChecker())
    for error in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{where}: {error.message} [CRD {crd_name}]")
    post_checks(schema, defaulted, "self", problems)
    return problems


# --------------------------------------------------------------------------------------------
# ServiceMonitor (monitoring.coreos.com/v1): the fields this chart can render
# --------------------------------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"]}},
    },
}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector"], "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION, "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}


# --------------------------------------------------------------------------------------------
# A small CEL evaluator (the subset CRD validation rules use)
# --------------------------------------------------------------------------------------------

class CelError(Exception):
    pass


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>\d+\.\d+|\d+u?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]{}])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)

_MISSING = object()


class Cel:
    """Pratt parser + evaluator over Python values; absent fields raise CelError('no such key')."""

    def __init__(self, expression):
        self.tokens = []
        pos = 0
        while pos < len(expression):
            m = _TOKEN.match(expression, pos)
            if not m:
                raise CelError(f"unexpected character {expression[pos]!r}")
            pos = m.end()
            if m.lastgroup != "ws":
                self.tokens.append((m.lastgroup, m.group()))
        self.tokens.append(("end", ""))
        self.pos = 0
        self.ast = self.parse_expr()
        if self.peek()[0] != "end":
            raise CelError(f"unexpected {self.peek()[1]!r}")

    # parsing
    def peek(self):
        return self.tokens[self.pos]

    def take(self, text=None):
        tok = self.tokens[self.pos]
        if text is not None and tok[1] != text:
            raise CelError(f"expected {text!r}, found {tok[1]!r}")
        self.pos += 1
        return tok

    def parse_expr(self):
        cond = self.parse_binary(0)
        if self.peek()[1] == "?":
            self.take("?")
            then = self.parse_expr()
            self.take(":")
            other = self.parse_expr()
            return ("cond", cond, then, other)
        return cond

    LEVELS = [["||"], ["&&"], ["==", "!=", "<", "<=", ">", ">=", "in"], ["+", "-"], ["*", "/", "%"]]

    def parse_binary(self, level):
        if level == len(self.LEVELS):
            return self.parse_unary()
        left = self.parse_binary(level + 1)
        while self.peek()[1] in self.LEVELS[level] and self.peek()[0] in ("op", "ident"):
            op = self.take()[1]
            right = self.parse_binary(level + 1)
            left = ("bin", op, left, right)
        return left

    def parse_unary(self):
        if self.peek()[1] in ("!", "-"):
            op = self.take()[1]
            return ("un", op, self.parse_unary())
        return self.parse_postfix(self.parse_primary())

    def parse_args(self):
        args = []
        self.take("(")
        while self.peek()[1] != ")":
            args.append(self.parse_expr())
            if self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return args

    def parse_postfix(self, node):
        while True:
            text = self.peek()[1]
            if text == ".":
                self.take(".")
                name = self.take()[1]
                if self.peek()[1] == "(":
                    node = ("method", node, name, self.parse_args())
                else:
                    node = ("field", node, name)
            elif text == "[":
                self.take("[")
                index = self.parse_expr()
                self.take("]")
                node = ("index", node, index)
            else:
                return node

    def parse_primary(self):
        kind, text = self.take()
        if kind == "num":
            return ("lit", float(text) if "." in text else int(text.rstrip("u")))
        if kind == "str":
            return ("lit", bytes(text[1:-1], "utf-8").decode("unicode_escape"))
        if text == "(":
            node = self.parse_expr()
            self.take(")")
            return node
        if text == "[":
            items = []
            while self.peek()[1] != "]":
                items.append(self.parse_expr())
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("]")
            return ("list", items)
        if kind == "ident":
            if text in ("true", "false"):
                return ("lit", text == "true")
            if text == "null":
                return ("lit", None)
            if self.peek()[1] == "(":
                return ("call", text, self.parse_args())
            return ("var", text)
        raise CelError(f"unexpected {text!r}")

    # evaluation
    def evaluate(self, env):
        return self.eval(self.ast, env)

    def eval(self, node, env):
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "list":
            return [self.eval(n, env) for n in node[1]]
        if kind == "var":
            if node[1] not in env:
                raise CelError(f"undeclared reference {node[1]!r}")
            return env[node[1]]
        if kind == "field":
            base = self.eval(node[1], env)
            if not isinstance(base, dict) or node[2] not in base:
                raise CelError(f"no such key: {node[2]}")
            return base[node[2]]
        if kind == "index":
            base, index = self.eval(node[1], env), self.eval(node[2], env)
            try:
                return base[index]
            except (KeyError, IndexError, TypeError):
                raise CelError(f"no such key or index: {index!r}")
        if kind == "cond":
            return self.eval(node[2], env) if self.truth(self.eval(node[1], env)) else self.eval(node[3], env)
        if kind == "un":
            value = self.eval(node[2], env)
            return (not self.truth(value)) if node[1] == "!" else -value
        if kind == "bin":
            return self.binary(node[1], node[2], node[3], env)
        if kind == "call":
            return self.call(node[1], node[2], env)
        if kind == "method":
            return self.method(node[1], node[2], node[3], env)
        raise CelError(f"cannot evaluate {kind}")

    @staticmethod
    def truth(value):
        if not isinstance(value, bool):
            raise CelError(f"expected a bool, got {value!r}")
        return value

    def binary(self, op, left, right, env):
        if op == "&&":
            return self.truth(self.eval(left, env)) and self.truth(self.eval(right, env))
        if op == "||":
            return self.truth(self.eval(left, env)) or self.truth(self.eval(right, env))
        a, b = self.eval(left, env), self.eval(right, env)
        ops = {
            "==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
            ">": lambda: a > b, ">=": lambda: a >= b, "in": lambda: a in b, "+": lambda: a + b,
            "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a // b if isinstance(a, int) else a / b,
            "%": lambda: a % b,
        }
        try:
            return ops[op]()
        except TypeError as e:
            raise CelError(str(e))

    def call(self, name, args, env):
        if name == "has":
            if len(args) != 1 or args[0][0] != "field":
                raise CelError("has() takes one field selection")
            base = self.eval(args[0][1], env)
            return isinstance(base, dict) and args[0][2] in base
        values = [self.eval(a, env) for a in args]
        if name == "size" and len(values) == 1:
            return len(values[0])
        if name in ("int", "string", "double") and len(values) == 1:
            return {"int": int, "string": str, "double": float}[name](values[0])
        raise CelError(f"unsupported function {name}()")

    def method(self, target, name, args, env):
        if name in ("all", "exists", "exists_one", "filter", "map"):
            if len(args) != 2 or args[0][0] != "var":
                raise CelError(f"{name}() takes a variable and an expression")
            var, body = args[0][1], args[1]
            items = self.eval(target, env)
            items = list(items.keys()) if isinstance(items, dict) else items
            results = [self.eval(body, {**env, var: item}) for item in items]
            if name == "all":
                return all(self.truth(r) for r in results)
            if name == "exists":
                return any(self.truth(r) for r in results)
            if name == "exists_one":
                return sum(1 for r in results if self.truth(r)) == 1
            if name == "filter":
                return [i for i, r in zip(items, results) if self.truth(r)]
            return results
        value = self.eval(target, env)
        values = [self.eval(a, env) for a in args]
        if name == "size" and not values:
            return len(value)
        if isinstance(value, str):
            string_methods = {
                "startsWith": lambda: value.startswith(values[0]),
                "endsWith": lambda: value.endswith(values[0]),
                "contains": lambda: values[0] in value,
                "matches": lambda: re.search(values[0], value) is not None,
                "lowerAscii": lambda: value.lower(),
                "upperAscii": lambda: value.upper(),
            }
            if name in string_methods:
                return string_methods[name]()
        raise CelError(f"unsupported method .{name}()")


# --------------------------------------------------------------------------------------------
# The CRDs against the contract
# --------------------------------------------------------------------------------------------

CONTRACT = {
    "addressspaces.ferry.dev": {"kind": "AddressSpace", "plural": "addressspaces", "singular": "addressspace", "shortNames": ["fas"]},
    "tenants.ferry.dev": {"kind": "Tenant", "plural": "tenants", "singular": "tenant", "shortNames": ["ften"]},
}


def check_crds(paths):
    problems = []
    found = {}
    for path in crd_files(paths):
        for doc in load_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                found.setdefault(doc["metadata"]["name"], []).append((path, doc))
    for name, copies in found.items():
        first_path, first = copies[0]
        for path, doc in copies[1:]:
            if doc != first:
                problems.append(f"CRD {name} differs between {first_path} and {path} (regenerate both)")
    for name, want in CONTRACT.items():
        if name not in found:
            problems.append(f"CRD {name} not found in {', '.join(crd_files(paths)) or 'no files'}")
            continue
        for path, doc in found[name]:
            spec = doc["spec"]
            names = spec.get("names", {})
            for key, value in want.items():
                if names.get(key) != value:
                    problems.append(f"{path}: {name}: names.{key} is {names.get(key)!r}, contract says {value!r}")
            if spec.get("group") != "ferry.dev":
                problems.append(f"{path}: {name}: group {spec.get('group')!r}")
            if spec.get("scope") != "Namespaced":
                problems.append(f"{path}: {name}: scope {spec.get('scope')!r}, contract says Namespaced")
            versions = {v["name"]: v for v in spec.get("versions", [])}
            v1 = versions.get("v1alpha1")
            if v1 is None:
                problems.append(f"{path}: {name}: no version v1alpha1")
                continue
            if not (v1.get("served") and v1.get("storage")):
                problems.append(f"{path}: {name}: v1alpha1 must be served and the storage version")
            if "status" not in (v1.get("subresources") or {}):
                problems.append(f"{path}: {name}: v1alpha1 has no status subresource")
            if not v1.get("additionalPrinterColumns"):
                problems.append(f"{path}: {name}: v1alpha1 has no printer columns")
    return problems


def resolve(schema, root):
    while isinstance(schema, dict) and "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def values_schema_problems(values_schema_path, crd_paths):
    """Walks the values schema's custom-resource specs alongside the CRD schemas."""
    import json
    with open(values_schema_path, encoding="utf-8") as f:
        values = json.load(f)
    crds = {kind: schema for (_, kind), (_, schema) in load_crds(crd_paths).items()}
    props = values["properties"]
    pairs = [
        ("addressSpace.spec", props["addressSpace"]["properties"]["spec"], crds.get("AddressSpace")),
        ("tenants[].spec", props["tenants"]["items"]["properties"]["spec"], crds.get("Tenant")),
    ]
    problems = []

    def walk(path, mine, theirs):
        mine, theirs = resolve(mine, values), theirs or {}
        if theirs.get("x-kubernetes-preserve-unknown-fields") and not theirs.get("properties"):
            return  # free-form in the CRD: anything the values allow is kept
        their_type = theirs.get("type")
        if "type" in mine and their_type and mine["type"] != their_type:
            problems.append(f"{path}: values schema type {mine['type']!r}, CRD type {their_type!r}")
        their_enum = [v for v in theirs.get("enum", mine.get("enum", [])) if v is not None]  # nullable adds null
        if "enum" in mine and set(mine["enum"]) != set(their_enum):
            problems.append(f"{path}: values enum {mine['enum']}, CRD enum {theirs.get('enum')}")
        for name, sub in (mine.get("properties") or {}).items():
            their_props = theirs.get("properties") or {}
            if name not in their_props:
                if not isinstance(theirs.get("additionalProperties"), dict):
                    problems.append(f"{path}.{name}: accepted by values.schema.json, unknown to the CRD")
                continue
            walk(f"{path}.{name}", sub, their_props[name])
        if "items" in mine:
            walk(f"{path}[]", mine["items"], theirs.get("items"))

    for path, mine, crd in pairs:
        if crd is None:
            problems.append(f"{path}: no CRD to compare with")
        else:
            walk(path, mine, (crd.get("properties") or {}).get("spec"))
    return problems


# --------------------------------------------------------------------------------------------
# Hardening
# --------------------------------------------------------------------------------------------

POD_TEMPLATES = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def hardening_problems(doc):
    kind = doc.get("kind")
    problems = []
    if kind in POD_TEMPLATES:
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            problems.append("pod securityContext.runAsNonRoot is not true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append("pod seccompProfile is not RuntimeDefault")
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            name = c.get("name")
            sc = c.get("securityContext") or {}
            want = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                    "runAsUser": 65532, "runAsGroup": 65532}
            for key, value in want.items():
                if sc.get(key, psc.get(key)) != value:
                    problems.append(f"container {name}: securityContext.{key} is {sc.get(key, psc.get(key))!r}, want {value!r}")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"container {name}: capabilities.drop is not [ALL]")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"container {name}: adds capabilities")
            if not (c.get("resources") or {}).get("requests"):
                problems.append(f"container {name}: no resource requests")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problems.append(f"container {name}: no {probe}")
            mounts = {m.get("mountPath") for m in c.get("volumeMounts") or []}
            if "/tmp" not in mounts:
                problems.append(f"container {name}: no writable /tmp volume (the root filesystem is read-only)")
    if kind in ("Role", "ClusterRole"):
        for rule in doc.get("rules") or []:
            for key in ("apiGroups", "resources", "verbs"):
                if "*" in (rule.get(key) or []):
                    problems.append(f"RBAC rule uses '*' in {key}: {rule}")
            for verb in ("escalate", "bind", "impersonate"):
                if verb in (rule.get("verbs") or []):
                    problems.append(f"RBAC rule grants {verb}: {rule}")
    return problems


# --------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kube-version", default="1.35.0")
    parser.add_argument("--crds", action="append", default=[], help="CRD file or directory (repeatable)")
    parser.add_argument("--check-crds", action="store_true", help="check the CRDs against the contract and exit")
    parser.add_argument("--values-schema", metavar="FILE")
    parser.add_argument("--expect", action="append", default=[], metavar="KIND=N")
    parser.add_argument("--require-hardened", action="store_true")
    parser.add_argument("manifests", nargs="*")
    args = parser.parse_args()

    if args.check_crds:
        problems = check_crds(args.crds)
        if args.values_schema:
            problems += values_schema_problems(args.values_schema, args.crds)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1 if problems else 0

    crds = load_crds(args.crds)
    failures = 0
    counts = {}
    for path in args.manifests:
        for doc in load_documents(path):
            kind, api = doc.get("kind"), doc.get("apiVersion")
            label = f"{path}: {kind} {(doc.get('metadata') or {}).get('name')}"
            if (api, kind) in crds:
                crd_name, schema = crds[(api, kind)]
                problems = validate_custom(doc, crd_name, schema)
            elif (api, kind) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
                validator = jsonschema.Draft202012Validator(SERVICE_MONITOR)
                problems = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                            for e in validator.iter_errors(doc)]
            elif api and api.startswith("ferry.dev/"):
                problems = [f"no CRD for {api} {kind} among {args.crds}"]
            else:
                try:
                    kubernetes_validate.validate(doc, args.kube_version, strict=True)
                    problems = []
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path) or "(root)"
                    problems = [f"{where}: {e.message} [Kubernetes {e.version}]"]
                except kubernetes_validate.SchemaNotFoundError as e:
                    problems = [e.message]
            counts[kind] = counts.get(kind, 0) + 1
            if args.require_hardened:
                problems += hardening_problems(doc)
            if problems:
                failures += 1
                print(f"INVALID {label}", file=sys.stderr)
                for p in problems:
                    print(f"    {p}", file=sys.stderr)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"    validated {sum(counts.values())} objects ({summary}); {failures} invalid")
    for expectation in args.expect:
        kind, _, number = expectation.partition("=")
        if counts.get(kind, 0) != int(number):
            print(f"UNEXPECTED: {counts.get(kind, 0)} {kind} objects, expected {number}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Problem as e:
        print(f"validate.py: {e}", file=sys.stderr)
        sys.exit(2)
