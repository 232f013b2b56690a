//! What `deploy/` ships and the binary generates for operators: the systemd unit passes
//! `systemd-analyze verify` (where that tool exists), the example configuration loads, and
//! `jochat-node` prints its version with the commit, shell completions and a manual page.

use std::path::Path;
use std::process::Command;

use jochat_testkit::process::node_binary;

fn deploy(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

fn run(args: &[&str]) -> String {
    let output = Command::new(node_binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("jochat-node runs");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("the output is UTF-8")
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "\n*** SKIPPED the_systemd_unit_verifies: systemd-analyze is not installed ***\n"
        );
        return;
    };
    assert!(found.status.success());
    // The unit names the installed binary; the one just built stands in for it.
    let unit = std::fs::read_to_string(deploy("jochat-node.service")).unwrap();
    assert!(unit.contains("DynamicUser=yes") && unit.contains("ProtectSystem=strict"));
    assert!(unit.contains("StateDirectory=jochat"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("jochat-node.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/jochat-node",
            &node_binary().display().to_string(),
        ),
    )
    .unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[test]
fn the_example_configuration_loads() {
    let effective = run(&[
        "--config",
        deploy("node.toml").to_str().unwrap(),
        "--print-config",
    ]);
    assert!(effective.contains("server-id = 1\n"), "{effective}");
    assert!(
        effective.contains("metrics-addr = \"127.0.0.1:9101\"\n"),
        "{effective}"
    );
}

#[test]
fn version_completions_and_manual() {
    let version = run(&["--version"]);
    assert!(version.starts_with("jochat-node "), "{version}");
    assert!(version.contains("(commit "), "{version}");
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(script.contains("--db-file"), "{shell}: {script}");
    }
    let manual = run(&["man"]);
    assert!(manual.contains(".TH jochat-node 1"), "{manual}");
    assert!(manual.contains("metrics\\-addr"), "{manual}");
}
