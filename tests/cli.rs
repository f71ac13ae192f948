//! The command line: check-config, config errors, --version.

use std::process::Command;

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secop-gateway"));
    c.env_remove("RUST_LOG").env_remove("SECOP_GATEWAY_CONFIG");
    c
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("secop-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn version() {
    let out = gateway().arg("--version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("secop-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_the_description_of_the_embedded_default() {
    let out = gateway().arg("check-config").output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON description");
    assert_eq!(d["equipment_id"], "secop_gateway_simulation");
    assert_eq!(d["modules"].as_object().map(|m| m.len()), Some(4));
    // The file in the repository is what is embedded.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let out2 = gateway()
        .arg("check-config")
        .arg("--config")
        .arg(file)
        .output()
        .expect("run");
    assert!(
        out.stdout == out2.stdout,
        "embedded and file descriptions differ"
    );
}

#[test]
fn broken_configs_are_refused_naming_file_key_and_reason() {
    let base = "[node]\nequipment_id = \"x\"\ndescription = \"d\"\n";
    let cases = [
        (
            format!("{base}[[module]]\nname = \"T\"\ndriver = \"sim_temperature\"\n[module.settings]\nramp = \"fast\"\n"),
            "module[0] (\"T\").settings: invalid type: string \"fast\", expected f64",
        ),
        (
            format!("{base}[[module]]\nname = \"T\"\ndriver = \"sim_magnet\"\n"),
            "module[0] (\"T\").driver: unknown driver \"sim_magnet\"",
        ),
        (
            format!("{base}[[module]]\nname = \"T\"\ndriver = \"sim_pressure\"\n[[module]]\nname = \"t\"\ndriver = \"sim_pressure\"\n"),
            "module \"t\": another module has the same name",
        ),
        (
            format!("{base}[[module]]\nname = \"1T\"\ndriver = \"sim_pressure\"\n"),
            "module \"1T\": not a valid SECoP name",
        ),
        (
            format!("{base}[listen]\nadress = \"x\"\n[[module]]\nname = \"T\"\ndriver = \"sim_pressure\"\n"),
            "unknown field `adress`",
        ),
        (format!("{base}[[module]\n"), "TOML parse error"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = scratch(&format!("broken{i}.toml"), text);
        for args in [vec!["check-config"], vec!["run", "--listen", "127.0.0.1:0"]] {
            let out = gateway()
                .args(&args)
                .arg("--config")
                .arg(&path)
                .output()
                .expect("run");
            assert_eq!(out.status.code(), Some(2), "{args:?} {text}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&path.display().to_string()),
                "names the file: {err}"
            );
            assert!(err.contains(expected), "expected {expected:?} in {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn environment_overrides() {
    let out = gateway()
        .arg("check-config")
        .env("SECOP_GATEWAY__NODE__EQUIPMENT_ID", "from_env")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(d["equipment_id"], "from_env");
    let out = gateway()
        .arg("check-config")
        .env("SECOP_GATEWAY__LISTEN__MAX_CONNECTIONS", "many")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_connections"));
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("config/examples") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let out = gateway()
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON description");
        assert!(!d["modules"]
            .as_object()
            .map(|m| m.is_empty())
            .unwrap_or(true));
        count += 1;
    }
    assert!(count >= 3, "found {count} examples");
}
