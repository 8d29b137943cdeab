//! Links the binary against the libpython that pyo3 found, with an rpath so
//! the binary runs without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
