//! Records the git commit for the `secop_gateway_build_info` metric, and prepares the
//! web client's assets (web/): each file gzip-compressed once here, with an ETag, so
//! that the binary serves them without compressing at run time.
use std::io::Write;
use std::path::Path;

/// A failure here fails the build with its message (the inputs are the repository's
/// own files, not anything a running gateway sees).
type BuildError = Box<dyn std::error::Error>;

fn main() -> Result<(), BuildError> {
    let hash = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SECOP_GATEWAY_GIT_HASH={hash}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    web_assets()
}

/// The files of web/ served under /assets/, with their content types (index.html is a
/// template, filled in per request: src/webclient.rs).
const ASSETS: &[(&str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
    ("icon.svg", "image/svg+xml"),
];

/// FNV-1a, 64 bits: a content hash for ETags and cache-busting URLs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn web_assets() -> Result<(), BuildError> {
    let out = std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?;
    let out = Path::new(&out);
    let mut table = String::from("&[\n");
    for (name, content_type) in ASSETS {
        let source = Path::new("web").join(name);
        println!("cargo:rerun-if-changed={}", source.display());
        let context = |what: &str, e: std::io::Error| format!("{what} {}: {e}", source.display());
        let bytes = std::fs::read(&source).map_err(|e| context("cannot read", e))?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&bytes)
            .map_err(|e| context("cannot compress", e))?;
        let gz = gz.finish().map_err(|e| context("cannot compress", e))?;
        let gz_path = out.join(format!("{name}.gz"));
        std::fs::write(&gz_path, &gz).map_err(|e| context("cannot write the gzip of", e))?;
        let plain = std::fs::canonicalize(&source).map_err(|e| context("cannot resolve", e))?;
        table.push_str(&format!(
            "    Asset {{ name: {name:?}, content_type: {content_type:?}, body: include_bytes!({plain:?}), gzip: include_bytes!({gz_path:?}), tag: \"{:016x}\" }},\n",
            fnv1a(&bytes)
        ));
    }
    table.push(']');
    std::fs::write(out.join("web_assets.rs"), table)
        .map_err(|e| format!("cannot write the asset table: {e}"))?;
    Ok(())
}
