# shellcheck shell=bash
# Helpers shared by scripts/demo and scripts/test (sourced, not run).
#
# fastserve embeds CPython through pyo3 and links libpython, so every build
# needs an interpreter built with a shared libpython (Py_ENABLE_SHARED=1).

# Print the pyenv root folder (where `pyenv install` puts interpreters).
pyenv_root() {
    if command -v pyenv >/dev/null 2>&1; then
        pyenv root
    else
        echo "${PYENV_ROOT:-$HOME/.pyenv}"
    fi
}

# Print the real path of a Python interpreter if CANDIDATE runs, else fail.
# A pyenv shim for a version that is installed but not selected exists on PATH
# and fails when run, so running it is the only reliable test.
resolve_python() {
    local candidate=$1
    "$candidate" -c 'import sys; print(sys.executable)' 2>/dev/null
}

# Succeed if PYTHON was built with a shared libpython.
has_shared_libpython() {
    local shared
    shared=$("$1" -c "import sysconfig; print(sysconfig.get_config_var('Py_ENABLE_SHARED'))")
    [[ $shared == 1 ]]
}

# Print the interpreter for Python VERSION (like 3.12). The candidates are
# `pythonVERSION` on PATH, then the newest pyenv install of that version, and
# the first that runs and has a shared libpython wins.
find_python_version() {
    local version=$1 root newest candidate found
    local candidates=("python$version")

    root=$(pyenv_root)
    newest=$(find "$root/versions" -maxdepth 1 -name "$version.*" -printf '%f\n' 2>/dev/null |
        grep -E "^${version//./\\.}\.[0-9]+$" | sort -V | tail -n 1)
    if [[ -n $newest ]]; then
        candidates+=("$root/versions/$newest/bin/python$version")
    fi

    for candidate in "${candidates[@]}"; do
        found=$(resolve_python "$candidate") || continue
        if has_shared_libpython "$found"; then
            echo "$found"
            return 0
        fi
        echo "note: skipping $found: it has no shared libpython" >&2
    done

    echo "error: no Python $version with a shared libpython found on PATH or in" \
        "$root/versions; install one with" \
        "'env PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install $version'" >&2
    return 1
}

# Fail with a message unless PYTHON was built with a shared libpython.
check_shared_libpython() {
    local python=$1 version
    if has_shared_libpython "$python"; then
        return 0
    fi

    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "error: $python (Python $version) has no shared libpython" \
        "(Py_ENABLE_SHARED is not 1), but fastserve embeds Python by linking" \
        "libpython$version.so; use an interpreter built with --enable-shared, for" \
        "example 'env PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install $version'," \
        "and pass it as PYTHON=/path/to/python" >&2
    return 1
}
