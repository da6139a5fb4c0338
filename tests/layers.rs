//! The crate graph of docs/architecture.md, held against `cargo metadata`: each crate depends
//! only on the crates below it that it is allowed to, only the runtime links wasmtime, and
//! only the wire and protocol crates link tonic, prost or axum, and only the graphs crate
//! ONNX Runtime's bindings.

use serde_json::Value;
use std::collections::BTreeMap;

/// Each crate of the host and the in-tree crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sluice-types", &[]),
    ("sluice-compute", &[]),
    ("sluice-graphs", &["sluice-types"]),
    (
        "sluice-runtime",
        &["sluice-types", "sluice-compute", "sluice-graphs"],
    ),
    (
        "sluice-serving",
        &["sluice-types", "sluice-runtime", "sluice-graphs"],
    ),
    ("sluice-api", &["sluice-types"]),
    (
        "sluice-frontend",
        &["sluice-types", "sluice-serving", "sluice-api"],
    ),
    ("sluice-samples", &[]),
    (
        "sluice",
        &[
            "sluice-types",
            "sluice-compute",
            "sluice-graphs",
            "sluice-runtime",
            "sluice-serving",
            "sluice-api",
            "sluice-frontend",
            "sluice-samples",
        ],
    ),
];

/// External crates (by name prefix) and the only crates that may depend on them.
const CONFINED: &[(&str, &[&str])] = &[
    ("wasmtime", &["sluice-runtime"]),
    ("tonic", &["sluice-api", "sluice-frontend"]),
    ("prost", &["sluice-api", "sluice-frontend"]),
    ("axum", &["sluice-frontend"]),
    ("ort", &["sluice-graphs"]),
];

/// Every workspace package's normal dependencies, by package name.
fn dependencies() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let names = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("a name").to_string())
                .collect();
            (package["name"].as_str().expect("a name").to_string(), names)
        })
        .collect()
}

#[test]
fn crates_depend_only_downward() {
    let dependencies = dependencies();
    for (krate, allowed) in ALLOWED {
        let deps = dependencies
            .get(*krate)
            .unwrap_or_else(|| panic!("{krate} is not in the workspace"));
        for dep in deps.iter().filter(|d| d.starts_with("sluice-")) {
            assert!(
                allowed.contains(&dep.as_str()),
                "{krate} depends on {dep}, which docs/architecture.md does not allow"
            );
        }
    }
}

#[test]
fn the_sandbox_and_the_wire_stay_in_their_crates() {
    let dependencies = dependencies();
    for (krate, deps) in &dependencies {
        if !ALLOWED.iter().any(|(name, _)| name == krate) {
            continue; // the SDK, the trainer and the benches are not layers of the host
        }
        for (prefix, owners) in CONFINED {
            if let Some(dep) = deps.iter().find(|d| d.starts_with(prefix)) {
                assert!(
                    owners.contains(&krate.as_str()),
                    "{krate} depends on {dep}; only {owners:?} may"
                );
            }
        }
    }
}
