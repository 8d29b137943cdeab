//! fastserve's modules as a library, shared by the `fastserve` binary
//! (`src/main.rs`, which reads as the program's flow) and the criterion
//! benchmarks in `benches/`.
//!
//! This is not a stable API. A module is `pub` only when the binary or a
//! benchmark uses it, and the others stay private to the crate.

// Used by the binary.
pub mod cli;
pub mod config;
pub mod envfile;
pub mod health;
pub mod logging;
pub mod supervisor;
pub mod worker;

// Used by the benchmarks: the hand-off queue and the Python thread.
pub mod bridge;
pub mod python;

mod http;
mod proxy;
mod server;
mod version;

/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage or configuration error; clap uses it too.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the app cannot start, as uvicorn uses it.
pub const EXIT_APP_START: u8 = 3;
