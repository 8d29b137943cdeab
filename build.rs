//! Links the binary against the libpython that pyo3 found, with an rpath so
//! the binary runs without `LD_LIBRARY_PATH`, and records the versions that
//! `fastserve --version` prints.

use std::process::Command;

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=Cargo.lock");

    let config = pyo3_build_config::get();
    let python_version = config
        .executable()
        .and_then(|python| {
            let output = Command::new(python)
                .args(["-c", "import platform; print(platform.python_version())"])
                .output()
                .ok()?;
            String::from_utf8(output.stdout).ok()
        })
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|| config.version().to_string());
    println!("cargo:rustc-env=FASTSERVE_PYTHON_VERSION={python_version}");
    println!(
        "cargo:rustc-env=FASTSERVE_HYPER_VERSION={}",
        locked_version("hyper")
    );
}

/// Reads the version of `package` from Cargo.lock, or "unknown" before the
/// lock file exists.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                return version.trim_matches('"').to_owned();
            }
        }
    }
    "unknown".to_owned()
}
