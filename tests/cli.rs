//! The command line: check-config, config errors, --version.

mod common;

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
            "module[0] (\"T\").settings.ramp: invalid type: string \"fast\", expected f64",
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

/// What `check-config` and `run` say about a config file: (exit code, stderr) of each.
/// `run` gets a few seconds to refuse the config (one it accepts would serve until
/// stopped: then the code is `None`).
fn verdicts(path: &std::path::Path, env: &[(&str, &str)]) -> Vec<(Option<i32>, String)> {
    let mut out = Vec::new();
    for (i, command) in ["check-config", "run"].iter().enumerate() {
        let err_path = path.with_extension(format!("err{i}"));
        let err_file = std::fs::File::create(&err_path).expect("stderr file");
        let mut cmd = gateway();
        cmd.args([command, "--listen", "127.0.0.1:0", "--config"])
            .arg(path)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(err_file);
        let mut child = cmd.spawn().expect("spawn");
        let started = std::time::Instant::now();
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status.code();
            }
            if started.elapsed() > std::time::Duration::from_secs(8) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        out.push((code, err));
    }
    out
}

/// Both commands refuse the config with exit code 2 and a message naming the file (or
/// variable), the key and the reason; nothing panics.
fn assert_refused(name: &str, text: &str, env: &[(&str, &str)], expected: &[&str]) {
    let path = scratch(name, text);
    for (command, (code, err)) in ["check-config", "run"].iter().zip(verdicts(&path, env)) {
        assert_eq!(code, Some(2), "{command} must refuse:\n{text}\n{err}");
        assert!(!err.contains("panicked"), "{command}: {err}");
        for e in expected {
            assert!(err.contains(e), "{command}: expected {e:?} in\n{err}");
        }
        let origin = if env.is_empty() {
            path.display().to_string()
        } else {
            format!("environment variable {}", env[0].0)
        };
        assert!(err.contains(&origin), "{command}: names {origin:?}:\n{err}");
    }
}

const BASE: &str =
    "[node]\nequipment_id = \"x\"\ndescription = \"d\"\n[discovery]\nenabled = false\n";
const PRESSURE: &str = "[[module]]\nname = \"p\"\ndriver = \"sim_pressure\"\n";
const CRYO: &str = "[[module]]\nname = \"T\"\ndriver = \"sim_temperature\"\n[[module]]\nname = \"p\"\ndriver = \"sim_pressure\"\n";

#[test]
fn durations_and_sizes_out_of_range_are_refused_by_check_config_and_run() {
    let link = "[[link]]\nname = \"l\"\nprotocol = \"ascii\"\ntcp = \"127.0.0.1:9\"\n";
    let on_link = "[[module]]\nname = \"v\"\nlink = \"l\"\nclass = \"Readable\"\n\
                   [[module.parameter]]\nname = \"value\"\ndatainfo = { type = \"double\" }\nquery = \"V?\"\n";
    let remote = "[[remote]]\nname = \"up\"\naddress = \"127.0.0.1:9\"\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("[node]\nequipment_id = \"x\"\ndescription = \"d\"\ndevice_timeout = 1e19\n{PRESSURE}"),
            vec!["node.device_timeout", "0.001", "86400"],
        ),
        (
            format!("{BASE}[listen.websocket]\nping_timeout = inf\n{PRESSURE}"),
            vec!["listen.websocket.ping_timeout", "inf"],
        ),
        (
            format!("{BASE}[listen.websocket]\nping_interval = 1e-12\n{PRESSURE}"),
            vec!["listen.websocket.ping_interval", "0.1", "3600"],
        ),
        (
            format!("{BASE}[listen]\nwrite_timeout = 1e300\n{PRESSURE}"),
            vec!["listen.write_timeout", "86400"],
        ),
        (
            format!("{BASE}[listen]\nhandshake_timeout = 1e300\n{PRESSURE}"),
            vec!["listen.handshake_timeout", "86400"],
        ),
        (
            format!("{BASE}[listen]\nidle_timeout = 1e300\n{PRESSURE}"),
            vec!["listen.idle_timeout", "86400"],
        ),
        (
            format!("{BASE}[listen]\nmax_line_bytes = 10000000000000\n{PRESSURE}"),
            vec!["listen.max_line_bytes"],
        ),
        (
            format!("{BASE}[listen]\nmax_connections = 99999999999999999999\n{PRESSURE}"),
            vec!["listen.max_connections", "99999999999999999999"],
        ),
        (
            format!("{BASE}{PRESSURE}{remote}timeout = inf\n"),
            vec!["remote[0] (\"up\").timeout", "inf"],
        ),
        (
            format!("{BASE}{PRESSURE}{remote}reconnect_max = 1e300\n"),
            vec!["remote[0] (\"up\").reconnect_max"],
        ),
        (
            format!("{BASE}{on_link}{link}timeout = 1e300\n"),
            vec!["link[0] (\"l\"): timeout: 1e300 s", "86400"],
        ),
        (
            format!("{BASE}{on_link}{link}pollinterval = 0.001\n"),
            vec!["link[0] (\"l\"): pollinterval", "0.1", "3600"],
        ),
        (
            format!("{BASE}{on_link}{link}max_age = 1e300\n"),
            vec!["link[0] (\"l\"): max_age"],
        ),
        (
            format!("{BASE}[[module]]\nname = \"T\"\ndriver = \"sim_temperature\"\n[module.settings]\ntime_constant = nan\n"),
            vec!["module[0] (\"T\").settings.time_constant", "nan"],
        ),
        (
            format!("{BASE}[[module]]\nname = \"T\"\ndriver = \"sim_temperature\"\n[module.settings]\ntime_constant = 1e300\n"),
            vec!["module[0] (\"T\").settings.time_constant"],
        ),
        (
            format!("{BASE}[[module]]\nname = \"io\"\ndriver = \"sim_communicator\"\n[module.settings]\nidentification = \"{}\"\n", "X".repeat(2000)),
            vec!["module[0] (\"io\").settings.identification", "1024"],
        ),
        (
            format!("{BASE}[[module]]\nname = \"v\"\nlink = \"l\"\nclass = \"Readable\"\nunit_id = 300\n{link}"),
            vec!["module[0]", "unit_id", "300"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_refused(&format!("range{i}.toml"), text, &[], expected);
    }
}

#[test]
fn what_run_refuses_check_config_refuses() {
    let view = |hide: &str| {
        format!("{BASE}{CRYO}[[extra_node]]\nequipment_id = \"view\"\ndescription = \"v\"\nlisten = \"127.0.0.1:0\"\nhide = [{hide}]\n")
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (view("\"T:target\""), vec!["extra_node[0] (\"view\").hide", "\"target\""]),
        (view("\"T:stop\""), vec!["extra_node[0] (\"view\").hide", "\"stop\""]),
        (view("\"p:value\""), vec!["extra_node[0] (\"view\").hide", "\"value\""]),
        (view("\"p:status\""), vec!["extra_node[0] (\"view\").hide", "\"status\""]),
        (view("\"T:nothing\""), vec!["extra_node[0] (\"view\").hide", "\"nothing\""]),
        (
            format!("{BASE}{CRYO}[[extra_node]]\nequipment_id = \"a\"\ndescription = \"a\"\nlisten = \"127.0.0.1:17123\"\n\
                     [[extra_node]]\nequipment_id = \"b\"\ndescription = \"b\"\nlisten = \"127.0.0.1:17123\"\n"),
            vec!["extra_node[1] (\"b\").listen", "127.0.0.1:17123"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_refused(&format!("run{i}.toml"), text, &[], expected);
    }
}

#[test]
fn module_properties_identification_and_names_follow_secop() {
    let with_props = |props: &str| format!("{BASE}{PRESSURE}[module.properties]\n{props}\n");
    let link = "[[link]]\nname = \"l\"\nprotocol = \"ascii\"\ntcp = \"127.0.0.1:9\"\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (with_props("visibilty = \"www\""), vec!["module[0] (\"p\").properties.visibilty", "_"]),
        (with_props("visibility = \"everyone\""), vec!["module[0] (\"p\").properties.visibility", "\"www\""]),
        (with_props("group = 5"), vec!["module[0] (\"p\").properties.group", "string"]),
        (with_props("meaning = \"nonsense\""), vec!["module[0] (\"p\").properties.meaning", "object"]),
        (
            with_props("meaning = { function = \"pressure\", importance = \"high\" }"),
            vec!["module[0] (\"p\").properties.meaning.importance"],
        ),
        (with_props("features = \"HasOffset\""), vec!["module[0] (\"p\").properties.features"]),
        (
            format!("[node]\nequipment_id = \"x\"\ndescription = \"d\"\nidentification = \"ISSE,SECoP\"\n{PRESSURE}"),
            vec!["node.identification", "four"],
        ),
        (
            format!("{BASE}[[module]]\nname = \"v\"\nlink = \"l\"\nclass = \"Readable\"\n\
                     [[module.parameter]]\nname = \"value\"\ndatainfo = {{ type = \"double\" }}\nquery = \"V?\"\n\
                     [[module.parameter]]\nname = \"heater\"\ndatainfo = {{ type = \"double\" }}\nquery = \"H?\"\n{link}"),
            vec!["module[0] (\"v\")", "\"heater\"", "_heater"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_refused(&format!("secop{i}.toml"), text, &[], expected);
    }
}

/// Datainfos that their instrument cannot deliver or take (issue 14, point 5): both
/// commands refuse them, naming the file, the module, the key and the reason.
#[test]
fn datainfo_mismatches_are_refused_naming_file_key_and_reason() {
    let ascii = |param: &str| {
        format!("{BASE}[[link]]\nname = \"l\"\nprotocol = \"ascii\"\ntcp = \"127.0.0.1:9\"\n\
                 [[module]]\nname = \"v\"\nlink = \"l\"\nclass = \"Readable\"\n\
                 [[module.parameter]]\nname = \"value\"\ndatainfo = {{ type = \"double\" }}\nquery = \"V?\"\n{param}")
    };
    let modbus = |param: &str| {
        format!("{BASE}[[link]]\nname = \"plc\"\nprotocol = \"modbus\"\ntcp = \"127.0.0.1:9\"\n\
                 [[module]]\nname = \"m\"\nlink = \"plc\"\nclass = \"Readable\"\n\
                 [[module.parameter]]\nname = \"value\"\ndatainfo = {{ type = \"double\" }}\ntable = \"input\"\naddress = 0\ntype = \"f32\"\n{param}")
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            ascii("[[module.parameter]]\nname = \"_mode\"\ndatainfo = { type = \"enum\", members = { a = 0, b = 1 } }\nwrite = \"MODE {value:.2f}\"\n"),
            vec!["link[0] (\"l\"): module \"v\": parameter[1] (\"_mode\").write: {value:.2f} writes a floating-point number, the datainfo is \"enum\""],
        ),
        (
            ascii("[[module.parameter]]\nname = \"_n\"\ndatainfo = { type = \"int\", min = 0, max = 9 }\nquery = \"N?\"\nscale = 0.1\n"),
            vec!["module \"v\": parameter[1] (\"_n\").scale: scale = 0.1 applies to double datainfos only, this one is \"int\""],
        ),
        (
            ascii("[[module.command]]\nname = \"_id\"\nsend = \"*IDN?\"\nresult = { type = \"string\" }\n"),
            vec!["module \"v\": command[0] (\"_id\").result: the result is read from the reply, but no reply pattern is given"],
        ),
        (
            modbus("[[module.parameter]]\nname = \"_count\"\ndatainfo = { type = \"int\", min = 0, max = 100000 }\ntable = \"input\"\naddress = 2\ntype = \"u16\"\n"),
            vec!["link[0] (\"plc\"): module \"m\": parameter[1] (\"_count\").datainfo: int max 100000 does not fit a u16 register (0 ..= 65535)"],
        ),
        (
            modbus("[[module.parameter]]\nname = \"_sn\"\ndatainfo = { type = \"string\" }\ntable = \"holding\"\naddress = 10\ntype = \"string\"\nlength = 4\n"),
            vec!["module \"m\": parameter[1] (\"_sn\").datainfo: give maxchars (at most 8: 4 registers of 2 characters)"],
        ),
        (
            modbus("[[module.parameter]]\nname = \"_mode\"\ndatainfo = { type = \"enum\", members = { a = 0 } }\ntable = \"input\"\naddress = 2\ntype = \"f32\"\n"),
            vec!["module \"m\": parameter[1] (\"_mode\").datainfo: an enum needs an integer register, not an f32 register"],
        ),
        (
            modbus("[[module.parameter]]\nname = \"_flag\"\ndatainfo = { type = \"int\", min = 0, max = 1 }\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n"),
            vec!["module \"m\": parameter[1] (\"_flag\").datainfo: a bool register gives true or false"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_refused(&format!("fit{i}.toml"), text, &[], expected);
    }
}

#[test]
fn errors_from_the_environment_name_the_variable() {
    let path = scratch("env.toml", &format!("{BASE}{PRESSURE}"));
    let text = std::fs::read_to_string(&path).expect("read");
    for (var, value, expected) in [
        ("SECOP_GATEWAY__LISTEN__FOO", "1", "unknown field `foo`"),
        (
            "SECOP_GATEWAY__NODE__DEVICE_TIMEOUT",
            "1e19",
            "node.device_timeout",
        ),
        (
            "SECOP_GATEWAY__LISTEN__MAX_CONNECTIONS",
            "many",
            "listen.max_connections",
        ),
    ] {
        assert_refused("env.toml", &text, &[(var, value)], &[expected]);
        let (_, err) = &verdicts(&path, &[(var, value)])[0];
        assert!(
            !err.contains(&path.display().to_string()),
            "the file is not to blame: {err}"
        );
    }
}

#[test]
fn a_port_clash_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let path = scratch(
        "clash.toml",
        &format!("{BASE}{PRESSURE}[listen]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    let out = gateway()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("cannot listen on").count(), 1, "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes when stderr is no terminal: {err}"
    );
}

/// Descriptions keep the order of the config file and are byte-identical from start to
/// start: EPICS bridges build enum choices in description order, so a shuffled order
/// shifts archived enum indices after a restart.
#[test]
fn descriptions_keep_config_order_and_are_identical_across_starts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("examples"))
        .expect("config/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .collect();
    files.push(dir.join("gateway.toml"));
    let ordered = scratch(
        "ordered.toml",
        "[node]\nequipment_id='x'\ndescription='d'\n[[module]]\nname='T'\ndriver='sim_pressure'\n\
         [module.properties]\n_zeta = 1\ngroup = 'g'\n_alpha = 2\n_mid = { z = 1, a = 2 }\n",
    );
    files.push(ordered.clone());
    let describe = |path: &std::path::Path| {
        let out = gateway()
            .arg("check-config")
            .arg("--config")
            .arg(path)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", path.display());
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    for path in &files {
        let first = describe(path);
        for _ in 0..3 {
            assert_eq!(describe(path), first, "{}: order changed", path.display());
        }
    }
    let lakeshore = describe(&dir.join("examples/lakeshore336-serial.toml"));
    let at = |name: &str| lakeshore.find(&format!("\"{name}\"")).expect(name);
    assert!(at("off") < at("low") && at("low") < at("medium") && at("medium") < at("high"));
    let text = describe(&ordered);
    let at = |name: &str| text.find(&format!("\"{name}\"")).expect(name);
    assert!(at("_zeta") < at("group") && at("group") < at("_alpha") && at("_alpha") < at("_mid"));
    assert!(at("z") < at("a"), "nested keys in file order too");
}

/// The config files the gateway ships: every example and the default.
fn shipped_configs() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("examples"))
        .expect("config/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .collect();
    files.sort();
    files.push(dir.join("gateway.toml"));
    files
}

/// Two starts of every shipped config give byte-identical `describing` replies over
/// the wire (not only from check-config): clients that cache descriptions, and EPICS
/// bridges that number enum choices in description order, see the same node after a
/// restart. The listen address is overridden (loopback, ephemeral port); serial
/// devices and LAN instruments that do not exist here just stay down.
#[test]
fn describe_over_the_wire_is_identical_across_starts() {
    let files = shipped_configs();
    assert!(files.len() >= 4, "{files:?}");
    for path in &files {
        // Includes are relative to the config file; the copy runs elsewhere.
        let dir = path.parent().expect("config dir").display().to_string();
        let text = std::fs::read_to_string(path)
            .expect("config")
            .replace("include = [\"", &format!("include = [\"{dir}/"));
        let describe = || {
            let gw = common::Gateway::start(&text);
            let mut client = gw.client();
            let reply = client.ask("describe");
            assert!(
                reply.starts_with("describing . {"),
                "{}: {reply}",
                path.display()
            );
            reply
        };
        let first = describe();
        let second = describe();
        if first != second {
            let at = first
                .bytes()
                .zip(second.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(first.len().min(second.len()));
            let around = |s: &str| s[at.saturating_sub(80)..(at + 80).min(s.len())].to_owned();
            panic!(
                "{}: the describing replies of two starts differ at byte {at}:\n  first:  ...{}...\n  second: ...{}...",
                path.display(),
                around(&first),
                around(&second)
            );
        }
    }
}

/// `check-config` of `path` (with `args` before `--config`): (stdout, stderr), asserting
/// success.
fn checked(path: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = gateway()
        .arg("check-config")
        .args(args)
        .arg("--config")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {err}", path.display());
    (String::from_utf8(out.stdout).expect("UTF-8"), err)
}

/// The examples are made from the templates in config/templates/; each describes exactly
/// the node of its flat copy in tests/flat-examples/ (every module written out, as the
/// examples were before templates), and what `--expanded` prints describes it too.
#[test]
fn examples_made_from_templates_describe_what_their_flat_copies_describe() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "lakeshore336-serial.toml",
        "modbus-rtu-flow-bus.toml",
        "modbus-tcp-power-supply.toml",
    ] {
        let example = root.join("config/examples").join(name);
        let (described, err) = checked(&example, &[], &[]);
        assert!(err.contains(" from template \""), "{name}: {err}");
        let (flat, _) = checked(&root.join("tests/flat-examples").join(name), &[], &[]);
        assert!(described == flat, "{name}: the description changed");
        let (expanded, _) = checked(&example, &["--expanded"], &[]);
        assert!(!expanded.contains("template = "), "{expanded}");
        assert!(expanded.contains("[[module.parameter]]"), "{expanded}");
        let again = scratch(&format!("expanded-{name}"), &expanded);
        assert!(
            checked(&again, &[], &[]).0 == described,
            "{name}: --expanded describes another node:\n{expanded}"
        );
    }
}

/// Three LakeShore inputs and eight flow controllers on a bus, a few lines each, from the
/// shipped templates; environment overrides apply to the expanded configuration.
#[test]
fn many_instruments_from_the_shipped_templates() {
    let templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/templates");
    let mut text = format!(
        "include = [{:?}, {:?}]\n{BASE}\
         [[link]]\nname = \"ls\"\nprotocol = \"ascii\"\nserial = \"/dev/ttyUSB0\"\n\
         [[link]]\nname = \"bus\"\nprotocol = \"modbus\"\nserial = \"/dev/ttyUSB1\"\n",
        templates.join("lakeshore336.toml").display().to_string(),
        templates
            .join("mass-flow-modbus.toml")
            .display()
            .to_string(),
    );
    for input in ["A", "B", "C"] {
        text.push_str(&format!(
            "[[module]]\nname = \"T_{input}\"\nlink = \"ls\"\ntemplate = \"lakeshore336_input\"\nargs = {{ input = \"{input}\" }}\n"
        ));
    }
    for unit in 1..=8 {
        text.push_str(&format!(
            "[[module]]\nname = \"mfc{unit}\"\nlink = \"bus\"\ntemplate = \"mass_flow_controller\"\nargs = {{ unit = {unit}, full_scale = {} }}\n",
            unit * 100
        ));
    }
    let path = scratch("many.toml", &text);
    let env = [("SECOP_GATEWAY__NODE__EQUIPMENT_ID", "from_env")];
    let (described, err) = checked(&path, &[], &env);
    let d: serde_json::Value = serde_json::from_str(&described).expect("JSON");
    assert_eq!(d["equipment_id"], "from_env");
    let modules = d["modules"].as_object().expect("modules");
    let names: Vec<&String> = modules.keys().collect();
    assert_eq!(names.len(), 11);
    assert_eq!(names[..4], ["T_A", "T_B", "T_C", "mfc1"], "config order");
    assert_eq!(modules["T_C"]["description"], "temperature, input C");
    assert_eq!(
        modules["mfc8"]["accessibles"]["target"]["datainfo"]["max"],
        800
    );
    assert!(
        err.contains("module \"mfc8\" from template \"mass_flow_controller\" ("),
        "{err}"
    );
    assert!(err.contains("unit = 8, full_scale = 800"), "{err}");
    let (expanded, _) = checked(&path, &["--expanded"], &[]);
    assert!(expanded.contains("query = \"KRDG? C\""), "{expanded}");
    assert!(expanded.contains("unit_id = 8\n"), "{expanded}");
    assert!(expanded.contains("stop = \"_close_valve\""), "{expanded}");
    // A bad override is still blamed on its variable.
    assert_refused(
        "many.toml",
        &text,
        &[("SECOP_GATEWAY__LISTEN__MAX_CONNECTIONS", "many")],
        &["listen.max_connections"],
    );
}

#[test]
fn template_mistakes_are_refused_naming_file_key_and_reason() {
    let templates = scratch(
        "tpl-ok.toml",
        "[[template]]\nname = \"meter\"\nparams = [\"channel\", \"unit\"]\ndefaults = { unit = \"V\" }\n\
         class = \"Readable\"\n\
         [[template.parameter]]\nname = \"value\"\ndatainfo = { type = \"double\", unit = \"${unit}\" }\n\
         query = \"MEAS? ${channel}\"\n\
         [[template.parameter]]\nname = \"_range\"\ndatainfo = { type = \"enum\", members = { low = 0, high = 1 } }\n\
         query = \"RANGE? ${channel}\"\nwrite = \"RANGE ${channel},{value:.2f}\"\n",
    );
    let head = format!(
        "include = [{:?}]\n{BASE}[[link]]\nname = \"l\"\nprotocol = \"ascii\"\ntcp = \"127.0.0.1:9\"\n",
        templates.file_name().and_then(|f| f.to_str()).expect("name")
    );
    let module = |rest: &str| format!("{head}[[module]]\nname = \"v\"\nlink = \"l\"\n{rest}\n");
    let invalid = format!(
        "link[0] (\"l\"): module \"v\" from template \"meter\" ({}): parameter[1] (\"_range\").write: {{value:.2f}} writes a floating-point number, the datainfo is \"enum\"",
        templates.display()
    );
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            module("template = \"metre\"\nargs = { channel = 1 }"),
            vec!["module[0] (\"v\").template: no template is named \"metre\" (there are: meter)"],
        ),
        (
            module("template = \"meter\""),
            vec!["module[0] (\"v\").args: missing \"channel\": template \"meter\" needs channel"],
        ),
        (
            module("template = \"meter\"\nargs = { channel = 1, chanel = 2 }"),
            vec!["module[0] (\"v\").args.chanel: template \"meter\" has no parameter \"chanel\" (it has channel, unit)"],
        ),
        (
            module("args = { channel = 1 }"),
            vec!["module[0] (\"v\").args: args without template"],
        ),
        // The expanded module is checked like any other, naming module and template.
        (
            module("template = \"meter\"\nargs = { channel = 1 }"),
            vec![&invalid],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_refused(&format!("tpl{i}.toml"), text, &[], expected);
    }
    // A mistake in an included file is blamed on that file.
    let broken = scratch(
        "tpl-broken.toml",
        "[[template]]\nname = \"t\"\nparams = [\"a\", \"b\"]\nclass = \"Readable\"\ndescription = \"${a} ${c}\"\n\
         [[template]]\nname = \"u\"\nclass = \"Readable\"\ntemplate = \"t\"\n",
    );
    let path = scratch(
        "tpl-includes-broken.toml",
        &format!("include = [\"tpl-broken.toml\", \"tpl-missing.toml\"]\n{BASE}{PRESSURE}"),
    );
    let broken = broken.display().to_string();
    for (code, err) in verdicts(&path, &[]) {
        assert_eq!(code, Some(2), "{err}");
        for line in [
            format!("{broken}: template[0] (\"t\").description: ${{c}} is not one of the template's params (a, b)"),
            format!("{broken}: template[0] (\"t\").params: \"b\" is never used in the template"),
            format!("{broken}: template[1] (\"u\").template: templates cannot use templates"),
            format!("{}: include[1]: ", path.display()),
            "tpl-missing.toml: cannot read".to_owned(),
        ] {
            assert!(err.contains(&line), "expected {line:?} in\n{err}");
        }
    }
}
