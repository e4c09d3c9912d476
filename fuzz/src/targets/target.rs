//! What every target is made of, and the helpers they share.

/// One decoder to fuzz.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Name: the corpus folder under `fuzz/corpus/` and the `--target` value.
    pub name: &'static str,
    /// What it feeds, to which functions.
    pub about: &'static str,
    /// Tokens the mutator inserts (field names, keywords, header names).
    pub dictionary: &'static [&'static str],
    /// Longest input generated.
    pub max_len: usize,
    /// Builds what the target needs besides its input (a model, a CA, a runtime) before
    /// the first input: a failure here is the harness's, reported as such, never a finding.
    pub prepare: fn() -> Result<(), String>,
    /// Runs one input; returns its outcome (the decoder's answer, for the runner's
    /// new-outcome test). A panic or an oversized allocation inside is a finding.
    pub run: fn(&[u8]) -> String,
}

/// `prepare` of a target that needs nothing but its input.
pub(super) fn nothing_to_prepare() -> Result<(), String> {
    Ok(())
}

/// A fixture built once; its error (a `String`) is what `prepare` reports.
pub(super) fn fixture<T>(
    cell: &'static std::sync::OnceLock<Result<T, String>>,
    build: impl FnOnce() -> Result<T, String>,
) -> Result<&'static T, String> {
    cell.get_or_init(build).as_ref().map_err(Clone::clone)
}

/// What `run` answers if its fixture is missing, which `prepare` has ruled out before any
/// input is run.
pub(super) const NO_FIXTURE: &str = "the target's fixture is missing";

/// `ok` or the error's message: what a decoder answered.
pub(super) fn outcome<T, E: std::fmt::Display>(result: &Result<T, E>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// The input as text, as a server that reads UTF-8 sees it (invalid sequences replaced, so
/// mutations that break UTF-8 still reach the decoder).
pub(super) fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}
