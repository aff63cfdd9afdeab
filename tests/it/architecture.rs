//! The shape of the code, checked by reading it: imports run one way along the data flow
//! (config → plan → source → batch → sink → state, with shared types below), the simulator
//! shares nothing with the client, `match`es on `Endpoint` have no wildcard arm, and the `lib.rs`
//! layout names every module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, lowest first. A module may import only modules before it,
/// except where [`forbidden`] says otherwise; the simulator is apart (see [`SIMULATOR_MAY_USE`]).
const LAYERS: &[&str] = &[
    // Shared vocabulary: no knowledge of vendors, warehouses or the flow.
    "time",
    "error",
    "row",
    "query",
    "schedule_time",
    // The flow.
    "config",
    "plan",
    "state",
    "budget",
    "source",
    "batch",
    "sink",
    "runner",
    // What drives it.
    "probe",
    "metrics",
    "scheduler",
    "readback",
    "ddl",
    "telemetry",
    "demo",
];

/// What the simulator may import from the rest of the crate: it must not parse requests with the
/// client's types, or it would agree with the client by construction.
const SIMULATOR_MAY_USE: &[&str] = &["time"];

/// Pairs (importer, imported) refused although the layer order would allow them: `batch` and
/// `source` are siblings (a table schema is built from the columns its caller passes), and `state`
/// knows nothing of sinks.
fn forbidden(importer: &str, imported: &str) -> bool {
    matches!((importer, imported), ("batch", "source"))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/source/giosg/realtime.rs` → `source`); `None` for
/// `lib.rs`, `main.rs` and `commands.rs` (the binary, which may use anything).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (!["lib", "main", "commands"].contains(&name.as_str())).then_some(name)
}

/// Every top-level module named by a `crate::` path in `code` (in `use` lines, `use crate::{a, b}`
/// groups and inline paths alike), comments left out.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
            rest = after;
        }
    }
    out
}

/// (file, importer module, imported module) for every import against the rules in `files`.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut out = Vec::new();
    for (path, code) in files {
        let Some(module) = module_of(path) else { continue };
        for imported in crate_refs(code) {
            if imported == module {
                continue;
            }
            let allowed = if module == "simulator" {
                SIMULATOR_MAY_USE.contains(&imported.as_str())
            } else if imported == "simulator" {
                module == "demo"
            } else {
                match (rank.get(module.as_str()), rank.get(imported.as_str())) {
                    (Some(a), Some(b)) => b < a && !forbidden(&module, &imported),
                    // A module missing from LAYERS is reported below.
                    _ => true,
                }
            };
            if !allowed {
                out.push(format!("{}: `{module}` imports `crate::{imported}`", path.display()));
            }
        }
    }
    out
}

fn read_all() -> Vec<(PathBuf, String)> {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

#[test]
fn imports_follow_the_data_flow() {
    let files = read_all();
    let problems = violations(&files);
    assert!(problems.is_empty(), "imports against the flow:\n{}", problems.join("\n"));
    for (path, _) in &files {
        if let Some(m) = module_of(path) {
            assert!(
                LAYERS.contains(&m.as_str()) || m == "simulator",
                "{}: module `{m}` has no place in LAYERS",
                path.display()
            );
        }
    }
}

#[test]
fn the_import_check_catches_an_import_against_the_flow() {
    // The check itself must fail on what it is there to refuse.
    let file = |p: &str, code: &str| (src().join(p), code.to_string());
    let cases = [
        file("config/mod.rs", "use crate::source::giosg::Thing;\n"),
        file("batch.rs", "let (d, m) = crate::source::columns(job);\n"),
        file("state/mod.rs", "fn f(c: &crate::sink::Commit<'_>) {}\n"),
        file("simulator/chat_sessions.rs", "use crate::{query::ChatSessionsQuery, time};\n"),
    ];
    for case in &cases {
        assert_eq!(violations(std::slice::from_ref(case)).len(), 1, "{case:?}");
    }
    let fine = [
        file("sink/mod.rs", "use crate::state::{JobState, next_watermark};\n"),
        file("source/x.rs", "// crate::sink\n"),
    ];
    assert!(violations(&fine).is_empty());
}

/// The `match` bodies in `code` (the text between the braces after each `match`).
fn match_bodies(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("match ") {
        let start = from + i;
        from = start + 6;
        let Some(open) = code[start..].find('{').map(|j| start + j) else { break };
        let mut depth = 0usize;
        for (k, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push(code[open + 1..open + k].to_string());
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Whether a match body has arms on `Endpoint::` and a catch-all arm (`_ =>` or a bare binding)
/// at its own level.
fn wildcard_on_endpoint(body: &str) -> bool {
    let mut depth = 0i32;
    let (mut on_endpoint, mut catch_all) = (false, false);
    for line in body.lines() {
        let t = line.trim();
        if depth == 0 {
            if t.starts_with("Endpoint::") {
                on_endpoint = true;
            }
            let head = t.split("=>").next().unwrap_or("").trim();
            if t.contains("=>")
                && (head == "_" || (!head.is_empty() && head.chars().all(|c| c.is_ascii_lowercase() || c == '_')))
            {
                catch_all = true;
            }
        }
        for c in t.chars() {
            match c {
                '{' | '(' | '[' => depth += 1,
                '}' | ')' | ']' => depth -= 1,
                _ => {}
            }
        }
    }
    on_endpoint && catch_all
}

#[test]
fn no_match_on_endpoint_has_a_wildcard_arm() {
    let mut found = Vec::new();
    for (path, code) in read_all() {
        for body in match_bodies(&code) {
            if wildcard_on_endpoint(&body) {
                found.push(format!("{}: a match on Endpoint with a catch-all arm:\n{body}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n\n"));
    let wild = "\n    Endpoint::ChatSessions => 1,\n    _ => 2,\n";
    let bound = "\n    Endpoint::ChatSessions => 1,\n    other => 2,\n";
    let exhaustive =
        "\n    Endpoint::ChatSessions => {\n        match x { _ => 1 }\n    }\n    Endpoint::Events => 2,\n";
    assert!(wildcard_on_endpoint(wild) && wildcard_on_endpoint(bound) && !wildcard_on_endpoint(exhaustive));
}

#[test]
fn the_lib_layout_names_every_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let layout: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|r| r.strip_suffix(';')) {
            assert!(layout.contains(&format!("[`{name}`]")), "lib.rs's layout does not name module `{name}`");
        }
    }
}
