//! Rendering error chains for people.
//!
//! Sluice's error types follow one rule: an error's `Display` says what failed at its own
//! level, and the cause is reachable through `source()`, never repeated in the message.
//! At the edges (HTTP bodies, status conditions, logs) the whole chain is rendered with
//! [`error_chain`], so nothing is lost and nothing is said twice.

use std::error::Error;

/// `outer: cause: root cause`, skipping a level whose text its cause already repeats.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load model")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /m/config.json")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn renders_every_level_once() {
        let e = Outer(Inner(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        )));
        assert_eq!(
            error_chain(&e),
            "cannot load model: cannot read /m/config.json: no such file"
        );
    }
}
