//! The container files, checked without a Docker engine (there is none here): the compose file
//! against the compose specification (`check-jsonschema`'s vendored compose-spec schema, from
//! PyPI through `scripts/test`), the properties the README promises of it and of the Dockerfile,
//! and the configuration the compose file mounts, validated with the variables it sets.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `check-jsonschema` of the venv `scripts/test` installs it into.
fn check_jsonschema() -> PathBuf {
    let python =
        std::env::var("CHATETL_TEST_PYTHON").expect("CHATETL_TEST_PYTHON is set: run the suite with scripts/test");
    Path::new(&python).with_file_name("check-jsonschema")
}

/// Whether `file` is valid against the compose specification, and what the checker said.
fn compose_spec_accepts(file: &Path) -> (bool, String) {
    let out = Command::new(check_jsonschema())
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file)
        .output()
        .expect("run check-jsonschema");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let file = repo("docker-compose.yml");
    let (ok, said) = compose_spec_accepts(&file);
    assert!(ok, "{said}");
    // The checker can fail: an unknown key under a service is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("docker-compose.yml");
    let text =
        std::fs::read_to_string(&file).unwrap().replace("    stop_grace_period: 45s\n", "    stop_grace_priod: 45s\n");
    std::fs::write(&broken, text).unwrap();
    let (ok, said) = compose_spec_accepts(&broken);
    assert!(!ok, "a misspelled key passed: {said}");
}

#[test]
fn the_container_runs_chatetl_as_the_readme_says() {
    let compose: Value = serde_saphyr::from_str(&std::fs::read_to_string(repo("docker-compose.yml")).unwrap()).unwrap();
    let services = &compose["services"];
    assert!(services["postgres"].get("ports").is_none(), "no database port is published by default");
    let chatetl = &services["chatetl"];
    // The daemon itself, no shell in between: signals reach it.
    assert!(chatetl.get("entrypoint").is_none(), "{chatetl}");
    let command: Vec<&str> = chatetl["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(command[0], "schedule");
    assert!(command.contains(&"--catch-up"), "{command:?}");
    let volumes: Vec<&str> = chatetl["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(
        volumes.contains(&"./jobs:/etc/chatetl/jobs:ro") && volumes.contains(&"./deploy:/etc/chatetl/deploy:ro"),
        "{volumes:?}"
    );
    let health = chatetl["healthcheck"]["test"].as_array().unwrap();
    assert!(health.iter().any(|v| v.as_str().unwrap().ends_with("/healthz")), "{health:?}");

    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/bin/tini", "--", "chatetl"]"#), "an init as PID 1");
    assert!(!dockerfile.contains("COPY jobs") && !dockerfile.contains("COPY deploy"), "jobs are mounted, not baked in");
    assert!(dockerfile.contains("--mount=type=cache,target=/src/target"), "the build reuses its dependencies");
    let cargo = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(cargo.contains("[profile.release]\n") && cargo.contains("strip = \"symbols\""), "a stripped binary");

    // The configuration the service mounts validates with the variables the compose file sets
    // (defaults taken, as compose would with none of them in the environment).
    let mut env: Vec<(String, String)> = Vec::new();
    for (key, value) in chatetl["environment"].as_object().unwrap() {
        let mut value = value.as_str().unwrap().to_string();
        // `${NAME:-default}`, possibly nested: the innermost default.
        while let Some(start) = value.find("${") {
            let inner = &value[start..];
            let default = inner.rsplit(":-").next().unwrap().trim_end_matches('}').to_string();
            value = default;
        }
        env.push((key.clone(), value));
    }
    let config = env.iter().find(|(k, _)| k == "CHATETL_CONFIG").unwrap().1.clone();
    assert_eq!(config, "/etc/chatetl/deploy/chatetl.postgres.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_chatetl"))
        .args(["--config", repo("deploy/chatetl.postgres.yaml").to_str().unwrap(), "validate", "--strict"])
        .envs(env.iter().filter(|(k, _)| k != "CHATETL_CONFIG").cloned())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("jobs"), "{said}");
}
