//! External programs that tests drive (mosquitto, mosquitto_sub, Python with Proton and paho-mqtt).
//!
//! `scripts/test` installs them; a test that needs one and does not find it panics with a message
//! naming the program, so a machine without it fails the run instead of skipping the test.

use std::env;
use std::path::{Path, PathBuf};

/// The variable `scripts/test` sets to a Python interpreter that imports both `proton` and
/// `paho.mqtt`.
pub const PYTHON_ENV: &str = "FERRY_TEST_PYTHON";

/// Where `name` is found on `PATH` (or `name` itself if it contains a `/` and is executable).
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = Path::new(name);
        return is_executable(path).then(|| path.to_path_buf());
    }
    let path_var = env::var_os("PATH")?;
    env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The path of `name` on `PATH`; panics naming the program if it is missing.
pub fn require_program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "this test needs the program `{name}`, which is not on PATH; run scripts/test, which \
             installs it (tests never skip when a program is missing)"
        )
    })
}

/// The Python interpreter that has Proton and paho-mqtt, from `FERRY_TEST_PYTHON`.
///
/// Debian's `python3-qpid-proton` lands in `/usr/bin/python3`, which need not be the `python3`
/// first on `PATH`, so tests must not guess: `scripts/test` picks the interpreter and exports it.
pub fn test_python() -> PathBuf {
    let value = env::var(PYTHON_ENV).unwrap_or_default();
    if value.is_empty() {
        panic!(
            "this test needs Python with Proton and paho-mqtt, named by {PYTHON_ENV}: run \
             scripts/test, which installs them and sets it"
        );
    }
    find_program(&value).unwrap_or_else(|| {
        panic!("{PYTHON_ENV}={value} is not an executable program; run scripts/test, which sets it")
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_program_finds_sh() {
        let sh = require_program("sh");
        assert!(sh.is_absolute(), "{}", sh.display());
        assert!(sh.ends_with("sh"));
    }

    #[test]
    fn absolute_paths_are_checked_directly() {
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("/nonexistent/ferry-no-such-program"), None);
    }

    #[test]
    #[should_panic(expected = "`ferry-no-such-program`")]
    fn missing_program_panics_naming_it() {
        require_program("ferry-no-such-program");
    }
}
