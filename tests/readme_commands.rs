//! Every `cargo run` line in README.md and the Makefile names a binary or example that cargo
//! finds from the workspace root as written: `--bin X` without `-p` must be a binary of one of
//! the workspace's default members, `-p P` must be a package of the workspace holding the
//! target, `--example X` an example of the package it runs in. (The README's first command
//! once named a binary outside the default-run package and failed on a fresh clone.)
//! `.ci/run` also runs the README's first command itself (`scripts/readme-first-command.sh`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One package: its name, whether it is a default member, its binaries and examples.
struct Package {
    name: String,
    default_member: bool,
    bins: BTreeSet<String>,
    examples: BTreeSet<String>,
}

fn workspace() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata is JSON");
    let defaults: BTreeSet<&str> = metadata["workspace_default_members"]
        .as_array()
        .expect("cargo metadata lists the default members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    metadata["packages"]
        .as_array()
        .expect("cargo metadata lists the packages")
        .iter()
        .map(|package| {
            let targets = package["targets"].as_array().cloned().unwrap_or_default();
            let of_kind = |kind: &str| -> BTreeSet<String> {
                targets
                    .iter()
                    .filter(|t| {
                        t["kind"]
                            .as_array()
                            .is_some_and(|k| k.iter().any(|k| k == kind))
                    })
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            };
            Package {
                name: package["name"].as_str().unwrap_or_default().to_owned(),
                default_member: defaults.contains(package["id"].as_str().unwrap_or_default()),
                bins: of_kind("bin"),
                examples: of_kind("example"),
            }
        })
        .collect()
}

/// The `cargo run …` commands of `text`, each cut at `--` (what follows goes to the program).
fn cargo_runs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.find("cargo run").map(|start| &line[start..]))
        .map(|command| {
            let command = command.split(" # ").next().unwrap_or(command);
            let command = command.split(" -- ").next().unwrap_or(command);
            command.trim_end_matches(['`', ')', ' ']).trim().to_owned()
        })
        .collect()
}

/// Why cargo would refuse `command` from the root, if it would.
fn refusal(command: &str, packages: &[Package]) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let value_of = |flag: &str| {
        words
            .iter()
            .position(|word| *word == flag)
            .and_then(|at| words.get(at + 1).copied())
    };
    let chosen: Vec<&Package> = match value_of("-p").or(value_of("--package")) {
        Some(name) => match packages.iter().find(|p| p.name == name) {
            Some(package) => vec![package],
            None => return Some(format!("no package named {name} in the workspace")),
        },
        None => packages.iter().filter(|p| p.default_member).collect(),
    };
    if let Some(bin) = value_of("--bin") {
        if !chosen.iter().any(|p| p.bins.contains(bin)) {
            return Some(format!("no binary named {bin} in the packages it runs in"));
        }
    }
    if let Some(example) = value_of("--example") {
        if !chosen.iter().any(|p| p.examples.contains(example)) {
            return Some(format!(
                "no example named {example} in the packages it runs in"
            ));
        }
    }
    if value_of("--bin").is_none() && value_of("--example").is_none() {
        let bins: usize = chosen.iter().map(|p| p.bins.len()).sum();
        if bins != 1 {
            return Some(format!(
                "names no target, and the packages it runs in have {bins} binaries"
            ));
        }
    }
    None
}

#[test]
fn every_cargo_run_line_names_a_target_cargo_finds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let packages = workspace();
    let mut checked = 0;
    let mut refused = Vec::new();
    for file in ["README.md", "Makefile"] {
        let text = std::fs::read_to_string(root.join(file)).expect("the file exists");
        for command in cargo_runs(&text) {
            checked += 1;
            if let Some(why) = refusal(&command, &packages) {
                refused.push(format!("{file}: `{command}`: {why}"));
            }
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
    // The README's first command, the web page, the examples, the cluster and the Makefile.
    assert!(checked >= 8, "only {checked} `cargo run` lines found");
}

#[test]
fn a_binary_outside_the_default_members_is_refused() {
    let packages = vec![
        Package {
            name: "root".into(),
            default_member: true,
            bins: BTreeSet::new(),
            examples: BTreeSet::from(["quickstart".to_owned()]),
        },
        Package {
            name: "node".into(),
            default_member: false,
            bins: BTreeSet::from(["node".to_owned()]),
            examples: BTreeSet::new(),
        },
    ];
    assert!(refusal("cargo run --release --bin node", &packages).is_some());
    assert!(refusal("cargo run --release -p node --bin node", &packages).is_none());
    assert!(refusal("cargo run --example quickstart", &packages).is_none());
    assert!(refusal("cargo run -p nothing", &packages).is_some());
    assert_eq!(
        cargo_runs("x  `cargo run --release --bin node -- web --servers a`  # note"),
        ["cargo run --release --bin node"]
    );
}
