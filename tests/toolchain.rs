//! The Rust version a newcomer needs: README, `rust-version` in Cargo.toml and the
//! locked dependencies agree.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `1.89` → (1, 89, 0).
fn version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The `rust-version = "..."` of a manifest.
fn rust_version(manifest: &str) -> Option<&str> {
    manifest.lines().find_map(|l| {
        let value = l
            .trim()
            .strip_prefix("rust-version")?
            .trim()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"'))
    })
}

/// Where cargo unpacks registry crates (`$CARGO_HOME/registry/src/<index>/`).
fn registry_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry/src")) else {
        return Vec::new();
    };
    std::fs::read_dir(src)
        .map(|dirs| dirs.filter_map(|d| d.ok().map(|d| d.path())).collect())
        .unwrap_or_default()
}

#[test]
fn readme_cargo_toml_and_the_lock_agree_on_the_rust_version() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let declared = rust_version(&cargo).expect("rust-version in Cargo.toml");
    let ours = version(declared).expect("a version");
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(
        readme.contains(&format!("Rust toolchain, {declared} or newer")),
        "README names rust-version {declared}"
    );
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let registries = registry_dirs();
    let mut checked = 0;
    let mut too_new = Vec::new();
    for package in lock.split("[[package]]") {
        let field = |key: &str| {
            package.lines().find_map(|l| {
                l.strip_prefix(key)
                    .map(|v| v.trim().trim_start_matches('=').trim().trim_matches('"'))
            })
        };
        let (Some(name), Some(v)) = (field("name "), field("version ")) else {
            continue;
        };
        let manifest = registries
            .iter()
            .map(|r| r.join(format!("{name}-{v}/Cargo.toml")))
            .find(|p| p.is_file());
        let Some(manifest) = manifest else { continue };
        checked += 1;
        let text = std::fs::read_to_string(&manifest).unwrap_or_default();
        if let Some(needed) = rust_version(&text).and_then(version) {
            if needed > ours {
                too_new.push(format!("{name} {v} needs {needed:?}"));
            }
        }
    }
    // Without unpacked sources (vendored, offline) there is nothing more to compare.
    if checked > 0 {
        assert!(
            too_new.is_empty(),
            "rust-version {declared} is below what the locked crates need: {too_new:?}"
        );
    }
}
