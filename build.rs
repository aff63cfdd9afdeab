//! Embeds the shipped job catalogue (`jobs/*.yaml`) and `chatetl.yaml` for `chatetl demo`, and
//! makes cargo rebuild when they or the state migrations (included with `include_str!`) change.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=jobs");
    println!("cargo:rerun-if-changed=chatetl.yaml");
    println!("cargo:rerun-if-changed=migrations");
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut files: Vec<_> = std::fs::read_dir(Path::new(&root).join("jobs"))
        .expect("jobs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out =
        String::from("/// The shipped job files: (file name, contents).\npub const JOBS: &[(&str, &str)] = &[\n");
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 file name");
        let _ = writeln!(out, "    ({name:?}, include_str!({:?})),", path.display().to_string());
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("shipped_jobs.rs");
    std::fs::write(dest, out).expect("write shipped_jobs.rs");
}
