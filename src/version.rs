//! Versions that `fastserve --version` prints, recorded by the build script.

use std::sync::LazyLock;

/// `fastserve X (Python Y, hyper Z)`, after clap's own "fastserve" prefix.
pub static LONG_VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (Python {}, hyper {})",
        env!("CARGO_PKG_VERSION"),
        env!("FASTSERVE_PYTHON_VERSION"),
        env!("FASTSERVE_HYPER_VERSION"),
    )
});
