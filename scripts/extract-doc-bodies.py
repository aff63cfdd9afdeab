#!/usr/bin/env python3
"""Extract every request body of api-docs 001 into tests/fixtures/api-docs-001/.

Run once when the docs change:  python3 scripts/extract-doc-bodies.py ../shared/api-docs/001_*.txt
Writes one file per body, named <metric>.<endpoint>.<n>.json, and index.json listing each with
its metric, endpoint, scope and whether it was a Python example (True/False and trailing commas
are rewritten to JSON; nothing else is changed). Bodies are kept verbatim otherwise.
"""
import json, re, sys, pathlib

src = pathlib.Path(sys.argv[1]).read_text().splitlines()
# Drop the line-number gutter lines of the web page.
lines = [l for l in src if not re.fullmatch(r"\s*\d+\s*", l)]
out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/api-docs-001"
out.mkdir(parents=True, exist_ok=True)
for old in out.glob("*.json"):
    old.unlink()

ENDPOINTS = {"chat_sessions": "chat_sessions", "events/v2": "events", "workflow": "workflow"}
metric = endpoint = None
index, counts = [], {}
i = 0
while i < len(lines):
    line = lines[i]
    if re.fullmatch(r"[A-Za-z][A-Za-z ]{2,40}", line.strip()) and not line.startswith(" "):
        if any("Request URL" in l for l in lines[i + 1:i + 6]):
            metric = line.strip().lower().replace(" ", "_")
    m = re.search(r"Request URL: POST \S+", line)
    if m:
        endpoint = next(v for k, v in ENDPOINTS.items() if k in line)
    python = line.startswith("json = {")
    start_indent = None
    if line.rstrip() == "{" or python:
        start_indent = ""
    elif line.rstrip() == "    {" and endpoint == "workflow":
        start_indent = "    "
    if start_indent is not None and metric:
        depth, body = 0, []
        j = i
        while j < len(lines):
            text = lines[j] if j > i else ("{" if python else lines[j])
            body.append(text)
            depth += text.count("{") - text.count("}")
            if depth == 0:
                break
            j += 1
        raw = "\n".join(body)
        fixed = re.sub(r"\bTrue\b", "true", raw)
        fixed = re.sub(r"\bFalse\b", "false", fixed)
        fixed = re.sub(r",(\s*[}\]])", r"\1", fixed)
        try:
            parsed = json.loads(fixed)
        except json.JSONDecodeError as e:
            print(f"skip unparseable body at line {i+1}: {e}", file=sys.stderr)
            i = j + 1
            continue
        scope = None
        def walk(f):
            global scope
            if isinstance(f, dict):
                if f.get("dimension") == "scope":
                    scope = f.get("value")
                for v in f.get("fields", []) if isinstance(f.get("fields"), list) else []:
                    walk(v)
        walk(parsed.get("filters", {}))
        if scope is None and endpoint == "events":
            scope = "user" if parsed.get("group_by") == ["user_id"] else "org"
        key = (metric, endpoint)
        counts[key] = counts.get(key, 0) + 1
        name = f"{metric}.{endpoint}.{counts[key]}.json"
        (out / name).write_text(fixed.strip() + "\n")
        index.append({"file": name, "metric": metric, "endpoint": endpoint, "scope": scope,
                      "python_example": python, "verbatim": fixed == raw})
        i = j + 1
        continue
    i += 1

(out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
by = {}
for e in index:
    by[e["endpoint"]] = by.get(e["endpoint"], 0) + 1
print(f"wrote {len(index)} bodies to {out}: {by}")
