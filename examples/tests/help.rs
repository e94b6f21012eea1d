//! Every example answers `--help` with exit status 0 and a usage line.
//!
//! Runs the example binaries cargo built next to this test (`cargo test`
//! builds a package's examples with its tests); the list is read from the
//! package's `[[example]]` entries, so a new example is covered too.

use std::path::PathBuf;
use std::process::Command;

/// The `name`s of the `[[example]]` entries of this package's manifest.
fn examples() -> Vec<String> {
    let manifest = include_str!("../Cargo.toml");
    let mut names = Vec::new();
    let mut in_example = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_example = line == "[[example]]";
        } else if let Some(v) = line.strip_prefix("name = ").filter(|_| in_example) {
            names.push(v.trim_matches('"').to_string());
        }
    }
    names
}

/// Where cargo put the example binaries: `<profile dir>/examples`, the
/// profile directory being the parent of this test's `deps`.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from <profile>/deps")
        .join("examples")
}

#[test]
fn every_example_answers_help_with_a_usage_line() {
    let names = examples();
    assert!(names.len() >= 4, "examples found: {names:?}");
    for name in names {
        let bin = examples_dir().join(&name);
        assert!(
            bin.is_file(),
            "{} is missing: build the examples (`cargo test -p hypercontainer-examples` does)",
            bin.display()
        );
        let out = Command::new(&bin)
            .arg("--help")
            .env_remove("HYPERCONTAINER_TEST_IMAGE")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} --help: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("Usage: {name}"))),
            "{name} --help prints no usage line:\n{stdout}"
        );
    }
}
