//! The bad-input corpus (`tests/fixtures/bad_config/`, format in its README): every case through
//! the real binary, asserting its exit code and message fragment, that nothing panicked, and that
//! no planted secret (every one contains `s3cr3t`) reached stdout or stderr.
//!
//! Nothing is sent anywhere: the sources of `base.yaml` point at 127.0.0.1:9, and every case fails
//! (or validates) before a source would be contacted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What every planted secret contains; it may appear in no output.
const SECRET_MARK: &str = "s3cr3t";

/// The variables `base.yaml` reads, as the test plants them.
const BASE_ENV: [(&str, &str); 5] = [
    ("GIOSG_TOKEN", "s3cr3t-giosg-token"),
    ("GIOSG_ORGANIZATION_ID", "org-1"),
    ("THULIUM_USER", "demo"),
    ("THULIUM_PASSWORD", "s3cr3t-thulium-password"),
    ("COMM100_TOKEN", "s3cr3t-comm100-token"),
];

/// The longest a case may take: each is a config check, so one that runs on is a daemon that
/// started (a case that should have failed).
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// One row of `cases.tsv`.
#[derive(Debug)]
struct Case {
    /// `job/NAME.yaml`, `config/NAME.yaml` or `dir/NAME`, relative to the corpus.
    case: String,
    args: Vec<String>,
    exit: i32,
    fragment: String,
    env: Option<(String, String)>,
    setup: Option<(String, String)>,
    line: usize,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_config")
}

/// `\n`, `\r`, `\t`, `\\` and `\xNN` in an env value of the manifest.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&hex, 16).expect("\\xNN")));
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join("cases.tsv")).unwrap();
    let optional = |s: &str| (s != "-").then(|| s.to_string());
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 6, "cases.tsv:{}: expected 6 tab-separated fields: {l}", i + 1);
            let pair = |s: Option<String>, sep: char| {
                s.map(|s| {
                    let (k, v) = s.split_once(sep).unwrap_or_else(|| panic!("cases.tsv:{}: `{s}`", i + 1));
                    (k.to_string(), v.to_string())
                })
            };
            Case {
                case: f[0].to_string(),
                args: f[1].split(' ').map(str::to_string).collect(),
                exit: f[2].parse().unwrap_or_else(|_| panic!("cases.tsv:{}: exit `{}`", i + 1, f[2])),
                fragment: f[3].to_string(),
                env: pair(optional(f[4]), '=').map(|(k, v)| (k, unescape(&v))),
                setup: pair(optional(f[5]), ':'),
                line: i + 1,
            }
        })
        .collect()
}

/// Copies `from` into `to`, symbolic links as links (a dangling one is a case).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The case's files in `dir`: a job file beside `base.yaml`, a chatetl.yaml with an empty jobs
/// folder, or a whole folder (with `base.yaml` when it has no chatetl.yaml). `false` when the
/// case cannot be set up here (a file root can read whatever its mode).
fn set_up(case: &Case, dir: &Path) -> bool {
    let src = corpus().join(&case.case);
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    let name = src.file_name().unwrap();
    match case.case.split('/').next() {
        Some("job") => {
            std::fs::copy(corpus().join("base.yaml"), dir.join("chatetl.yaml")).unwrap();
            std::fs::copy(&src, dir.join("jobs").join(name)).unwrap();
        }
        Some("config") => {
            std::fs::copy(&src, dir.join("chatetl.yaml")).unwrap();
        }
        Some("dir") => {
            copy_tree(&src, dir);
            if !dir.join("chatetl.yaml").exists() {
                std::fs::copy(corpus().join("base.yaml"), dir.join("chatetl.yaml")).unwrap();
            }
        }
        _ => panic!("cases.tsv:{}: unknown case kind `{}`", case.line, case.case),
    }
    match &case.setup {
        None => true,
        Some((kind, path)) if kind == "fifo" => {
            let path = std::ffi::CString::new(dir.join(path).to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path that outlives the call.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
            true
        }
        Some((kind, path)) if kind == "chmod000" => {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(path);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
            std::fs::File::open(&path).is_err()
        }
        Some((kind, _)) => panic!("cases.tsv:{}: unknown setup `{kind}`", case.line),
    }
}

/// Runs the case: (exit code, stdout and stderr), or `None` when it did not end in time.
fn run(case: &Case, dir: &Path) -> Option<(i32, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    // What the environment the tests run in could bring in: chatetl's variables, a database.
    for v in crate::config_cli::VARIABLES.iter().chain(&["DATABASE_URL"]) {
        cmd.env_remove(v);
    }
    cmd.envs(BASE_ENV).envs(case.env.iter().map(|(k, v)| (k, v))).current_dir(dir);
    if !case.args.iter().any(|a| a == "--config") {
        cmd.arg("--config").arg(dir.join("chatetl.yaml"));
    }
    let out_path = dir.join(".out");
    let out = std::fs::File::create(&out_path).unwrap();
    cmd.args(&case.args).stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
    let mut child = cmd.spawn().expect("run chatetl");
    let deadline = Instant::now() + CASE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let bytes = std::fs::read(&out_path).unwrap();
    Some((status.code().unwrap_or(-1), String::from_utf8_lossy(&bytes).into_owned()))
}

#[test]
fn config_corpus_every_bad_input_exits_as_declared_without_panic_or_secret() {
    let cases = cases();
    let files: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.case.as_str()).collect();
    assert!(cases.len() >= 166 && files.len() >= 166, "{} cases in {} files", cases.len(), files.len());
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().unwrap();
        let what = format!("cases.tsv:{} {} [{}]", case.line, case.case, case.args.join(" "));
        if !set_up(case, dir.path()) {
            skipped.push(what);
            continue;
        }
        let Some((code, output)) = run(case, dir.path()) else {
            failures.push(format!("{what}: still running after {CASE_TIMEOUT:?}"));
            continue;
        };
        let mut problems = Vec::new();
        if code == 101 || output.contains("panicked") {
            problems.push("panicked".to_string());
        }
        if code != case.exit {
            problems.push(format!("exit {code}, expected {}", case.exit));
        }
        if !output.contains(&case.fragment) {
            problems.push(format!("no `{}`", case.fragment));
        }
        if output.to_lowercase().contains(SECRET_MARK) {
            problems.push("a planted secret was printed".to_string());
        }
        if !problems.is_empty() {
            failures.push(format!("{what}: {}\n{output}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    // Root reads any file: the unreadable-file case can only be checked unprivileged.
    assert!(skipped.len() <= 1, "skipped: {skipped:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "the corpus took {:?}", started.elapsed());
}
