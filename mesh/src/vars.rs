//! The environment variables a process was started with, as data. A library in Sluice never
//! reads the process environment itself: the command reads it once
//! (`Vars::new(std::env::vars_os())`) and hands it to what needs it (a replica's mesh
//! hand-off, span export), so tests pass their own and nothing depends on hidden state.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

/// Variables by name; those whose name or value is not UTF-8 are remembered as such.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    values: BTreeMap<String, String>,
    not_unicode: BTreeSet<String>,
}

/// A variable is set but its value is not UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("${0} is not UTF-8")]
pub struct NotUnicode(pub String);

impl Vars {
    /// From `(name, value)` pairs, e.g. `std::env::vars_os()`.
    pub fn new(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut out = Self::default();
        for (name, value) in vars {
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    out.values.insert(name, value);
                }
                Err(_) => {
                    out.not_unicode.insert(name);
                }
            }
        }
        out
    }

    /// With `name` set to `value` (tests, and commands that set a default).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.not_unicode.remove(name);
        self.values.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The value of `name`; `Ok(None)` when unset.
    pub fn get(&self, name: &str) -> Result<Option<&str>, NotUnicode> {
        if self.not_unicode.contains(name) {
            return Err(NotUnicode(name.to_owned()));
        }
        Ok(self.values.get(name).map(String::as_str))
    }

    /// The value of `name`, unset and non-UTF-8 alike as `None`.
    pub fn value(&self, name: &str) -> Option<String> {
        self.get(name).ok().flatten().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn values_and_their_absence_and_non_utf8_ones_are_told_apart() {
        let vars = Vars::new([
            (OsString::from("A"), OsString::from("1")),
            (OsString::from("B"), OsString::from_vec(vec![0xff, 0xfe])),
        ]);
        assert_eq!(vars.get("A"), Ok(Some("1")));
        assert_eq!(vars.get("C"), Ok(None));
        assert_eq!(vars.get("B"), Err(NotUnicode("B".into())));
        assert_eq!(vars.value("B"), None);
        assert_eq!(vars.with("B", "2").get("B"), Ok(Some("2")));
    }
}
