"""Checks the plugin's config files the way EMQX's build tooling would: config.hocon
(written in JSON syntax, which HOCON accepts) must decode against config_schema.avsc,
every $msgid the schema uses must have en and zh texts, and the defaults in the schema
must equal config.hocon's. Exits non-zero with the reasons.
The other layers' defaults (emqx_offline_cassandra_config:defaults/0 and the storage core's,
through the NIF) and the form's bound of max_returned_count are compared with these files by
emqx_offline_cassandra_config_tests."""
import json
import sys

from fastavro.schema import parse_schema
from fastavro.validation import validate

priv = sys.argv[1] if len(sys.argv) > 1 else "priv"
problems = []
schema = json.load(open(f"{priv}/config_schema.avsc"))
config = json.load(open(f"{priv}/config.hocon"))
i18n = json.load(open(f"{priv}/config_i18n.json"))

try:
    validate(config, parse_schema(schema), strict=True)
except Exception as e:  # fastavro raises ValidationError with the path
    problems.append(f"config.hocon does not match config_schema.avsc: {e}")


def msgids(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from msgids(v)
    elif isinstance(node, list):
        for v in node:
            yield from msgids(v)
    elif isinstance(node, str) and node.startswith("$"):
        yield node[1:]


nested = [f for f in schema["fields"] if isinstance(f["type"], dict) and f["type"].get("type") == "record"]
uis = [f.get("$ui", {}) for f in schema["fields"]]
uis += [g.get("$ui", {}) for f in nested for g in f["type"]["fields"]]
for msgid in sorted(set(msgids(uis))):
    texts = i18n.get(msgid)
    if not texts or not texts.get("en") or not texts.get("zh"):
        problems.append(f"config_i18n.json lacks en/zh for ${msgid}")

for field in schema["fields"]:
    name = field["name"]
    if field.get("default") != config.get(name) and name not in ("username", "password"):
        problems.append(f"default of {name}: schema {field.get('default')!r}, config.hocon {config.get(name)!r}")

for p in problems:
    print("FAIL", p)
print(f"{'ok' if not problems else 'FAILED'}: config.hocon, config_schema.avsc, config_i18n.json")
sys.exit(1 if problems else 0)
