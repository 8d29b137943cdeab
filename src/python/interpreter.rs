//! Starting the embedded CPython interpreter in the right environment.
//!
//! The app's dependencies come from the virtual environment that is active
//! (`VIRTUAL_ENV`) or the one this binary is installed in, as they would for
//! `uvicorn` run from that environment. Pointing the interpreter's program
//! name at the venv's `bin/python` makes CPython's own start-up read
//! `pyvenv.cfg` and set `sys.prefix`, `sys.executable` and `sys.path` exactly
//! as for `venv/bin/python`.

use std::ffi::{CString, NulError};
use std::path::{Path, PathBuf};

use pyo3::ffi;

/// Why the interpreter did not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid path {path:?} for the Python interpreter: it contains a NUL byte")]
    NulInPath {
        path: PathBuf,
        #[source]
        source: NulError,
    },
    #[error("the Python interpreter failed to start: {message}")]
    Status { message: String },
}

/// Finds the virtual environment to use: `VIRTUAL_ENV` when it names one,
/// else the venv this binary was installed into, else none.
pub fn find_virtualenv() -> Option<PathBuf> {
    let from_env = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from);
    let from_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf));
    [from_env, from_binary]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("pyvenv.cfg").is_file())
}

/// Initialises CPython on the calling thread and then releases the GIL.
///
/// The calling thread becomes Python's main thread but runs no Python code
/// afterwards. The event loop runs on another thread, so neither asyncio nor
/// uvloop installs handlers for SIGINT there. Python installs no signal
/// handlers either: signals belong to the Rust side.
pub fn initialize(virtualenv: Option<&Path>) -> Result<(), InitError> {
    let program_name = virtualenv.map(|venv| venv.join("bin").join("python"));
    let program_name = program_name
        .map(|path| {
            let bytes = path.as_os_str().as_encoded_bytes().to_vec();
            CString::new(bytes).map_err(|source| InitError::NulInPath { path, source })
        })
        .transpose()?;
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|arg| CString::new(arg.as_encoded_bytes().to_vec()).ok())
        .collect();

    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: PyConfig_InitPythonConfig fully initialises the struct it is
    // given; the pointer is valid and the struct is not used before.
    unsafe { ffi::PyConfig_InitPythonConfig(config.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let config = unsafe { config.assume_init_mut() };
    config.install_signal_handlers = 0;
    // Our command line is fastserve's, not Python's: keep it out of `-X`,
    // `-m` and friends, but show it to the app as `sys.argv`.
    config.parse_argv = 0;

    let result = (|| {
        if let Some(name) = &program_name {
            // SAFETY: `config` is initialised, the field belongs to it and
            // `name` is a NUL-terminated string that outlives the call.
            check(unsafe {
                ffi::PyConfig_SetBytesString(config, &mut config.program_name, name.as_ptr())
            })?;
        }
        let mut pointers: Vec<*const std::ffi::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: the pointers refer to NUL-terminated strings in `argv`,
        // alive for the call; CPython copies them.
        check(unsafe {
            ffi::PyConfig_SetBytesArgv(config, pointers.len() as isize, pointers.as_mut_ptr())
        })?;
        // SAFETY: `config` is a fully initialised PyConfig; the interpreter
        // is not running yet (this is the only place that starts it).
        check(unsafe { ffi::Py_InitializeFromConfig(config) })
    })();

    // SAFETY: `config` was initialised by PyConfig_InitPythonConfig and is
    // not used after this; clearing frees the strings CPython copied.
    unsafe { ffi::PyConfig_Clear(config) };
    result?;

    // SAFETY: the interpreter was just initialised on this thread, which
    // holds the GIL. The returned thread state is never restored because
    // this thread does not run Python again; other threads attach with
    // PyGILState_Ensure through pyo3.
    unsafe { ffi::PyEval_SaveThread() };
    Ok(())
}

fn check(status: ffi::PyStatus) -> Result<(), InitError> {
    // SAFETY: PyStatus_Exception only reads the plain struct passed by value.
    if unsafe { ffi::PyStatus_Exception(status) } == 0 {
        return Ok(());
    }
    let message = if status.err_msg.is_null() {
        "no message".to_owned()
    } else {
        // SAFETY: CPython sets `err_msg` to a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    Err(InitError::Status { message })
}
